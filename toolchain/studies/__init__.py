"""The paper's studies on trained networks, and the report that gathers them.

    convert:    ANN twin -> spiking checkpoint by threshold balancing
    sweep:      mIoU against the number of time steps T
    energy:     spikes, synaptic operations, MACs, energy per frame, Loihi 2 cores
    robustness: mIoU under input and event-camera corruptions
    report:     one Markdown + HTML page from run folders
"""
