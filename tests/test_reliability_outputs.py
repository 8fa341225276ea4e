"""Outputs are never half-written under their final name: a process killed
while writing, a full disk or a read-only folder leave the earlier file
intact and give one clear error. Corrupt or foreign checkpoints are refused
before the model is built; weights that do not fit Loihi are clamped with a
warning that names the layer."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile

import pytest
import torch

import models
from deploy import netfile
from deploy.export import build_netfile
from tests.test_lava_equivalence import CASES, graph
from toolchain.core import checkpoint, loihi
from toolchain.core.errors import ToolchainError
from toolchain.core.files import write_text


@pytest.fixture
def net():
    spec, shape = CASES["skip_add"]
    return build_netfile(graph(spec, shape), time_steps=4, class_names=["a", "b", "c"])


# Each writer, run in a child process that dies mid-write: by SIGKILL from
# inside the write, or by the file-size limit (what a full disk looks like).
WRITERS = {
    "net": ("from deploy import netfile; from deploy.export import build_netfile\n"
            "from tests.test_lava_equivalence import CASES, graph\n"
            "spec, shape = CASES['skip_add']\n"
            "net = build_netfile(graph(spec, shape), time_steps=9, class_names=['x', 'y', 'z'])\n"
            "hook = netfile._write_synapse\n"
            "netfile._write_synapse = lambda g, s: (hook(g, s), DIE())\n"
            "netfile.write(PATH, net)\n"),
    "checkpoint": ("import torch; from toolchain.core import checkpoint\n"
                   "save = torch.save\n"
                   "torch.save = lambda obj, f: (save(obj, f), DIE())\n"
                   "checkpoint.save(PATH, model={'w': torch.ones(300_000)}, epoch=9)\n"),
    "report": ("from toolchain.core.files import atomic_path\n"
               "with atomic_path(PATH) as tmp:\n"
               "    tmp.write_bytes(b'new report ' * 100_000)\n"
               "    DIE()\n"),
}
DEATHS = {
    "sigkill": "import os, signal\nDIE = lambda: os.kill(os.getpid(), signal.SIGKILL)\n",
    # writes past 4 kB fail with EFBIG, as they would with ENOSPC on a full disk
    "size limit": ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                   "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 12, resource.RLIM_INFINITY))\n"
                   "DIE = lambda: None\n"),
}


@pytest.fixture
def earlier(tmp_path, net):
    """The earlier output of each kind, and a reader that identifies it."""
    paths = {"net": tmp_path / "m.net", "checkpoint": tmp_path / "checkpoint.pt", "report": tmp_path / "report.md"}
    netfile.write(paths["net"], net)
    checkpoint.save(paths["checkpoint"], model={"w": torch.zeros(3)}, epoch=1)
    write_text(paths["report"], "old report")
    readers = {"net": lambda p: netfile.read(p).time_steps,
               "checkpoint": lambda p: checkpoint.load(p)["epoch"],
               "report": lambda p: p.read_text()}
    return paths, readers


@pytest.mark.slow
@pytest.mark.parametrize("death", sorted(DEATHS))
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_dying_writer_leaves_the_earlier_output_intact(earlier, kind, death):
    paths, readers = earlier
    path = paths[kind]
    before = readers[kind](path)
    script = f"PATH = {str(path)!r}\n" + DEATHS[death] + WRITERS[kind]
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if death == "sigkill":
        assert p.returncode == -9, p.stderr[-2000:]
    else:
        assert p.returncode != 0 and "ToolchainError" in p.stderr and "earlier content kept" in p.stderr, \
            p.stderr[-2000:]
        assert str(path) in p.stderr
    assert readers[kind](path) == before
    if death != "sigkill":  # a clean failure also removes its temporary file
        assert sorted(x.name for x in path.parent.iterdir()) == sorted(x.name for x in paths.values())


def test_disk_full_is_a_clear_error_and_keeps_the_earlier_net(tmp_path, net, monkeypatch):
    path = tmp_path / "m.net"
    netfile.write(path, net)
    original = path.read_bytes()

    def full(g, syn):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(netfile, "_write_synapse", full)
    with pytest.raises(ToolchainError, match="No space left on device") as e:
        netfile.write(path, net)
    assert str(path) in str(e.value) and path.read_bytes() == original
    assert [x.name for x in tmp_path.iterdir()] == ["m.net"]


def test_read_only_folder_is_a_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    write_text(folder / "report.md", "old")
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores permission bits: make the OS answer as a read-only mount
        def refuse(*a, **k):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        with pytest.raises(ToolchainError, match="cannot write here") as e:
            write_text(folder / "report.md", "new")
        assert str(folder / "report.md") in str(e.value)
        assert (folder / "report.md").read_text() == "old"
    finally:
        folder.chmod(0o755)


@pytest.fixture
def ckpt(tmp_path):
    """A real (untrained) checkpoint of the tiny preset."""
    from toolchain.core.config import Config, to_dict

    cfg = Config()
    cfg.model.name = "spiking-deeplab-tiny"
    model = models.from_config(cfg, 2, 3)
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, model=model.state_dict(), config=to_dict(cfg), epoch=1, step=0,
                    dataset=dict(in_channels=2, num_classes=3, class_names=["a", "b", "c"]))
    return path


def _rewrite(path, fn):
    c = checkpoint.load(path)
    fn(c)
    torch.save(c, path)


BAD_CHECKPOINTS = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:1000]), "not a readable checkpoint"),
    "foreign": (lambda p: torch.save([1, 2, 3], p), "not a toolchain training checkpoint"),
    "missing layer": (lambda p: _rewrite(p, lambda c: c["model"].pop(sorted(c["model"])[0])), "do not fit"),
    "shapes disagree": (lambda p: _rewrite(p, lambda c: c["model"].update(
        {max(c["model"], key=lambda k: c["model"][k].numel()): torch.zeros(1)})), "do not fit"),
    "absurd channels": (lambda p: _rewrite(p, lambda c: c["dataset"].update(in_channels=10 ** 9)),
                        "'in_channels' = 1000000000"),
    "absurd classes": (lambda p: _rewrite(p, lambda c: c["dataset"].update(num_classes="many")), "'num_classes'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_broken_checkpoint_gives_one_clear_error(ckpt, case):
    damage, message = BAD_CHECKPOINTS[case]
    models.load_checkpoint(ckpt)  # the intact one loads
    damage(ckpt)
    with pytest.raises(ToolchainError) as e:
        models.load_checkpoint(ckpt)
    assert message in str(e.value) and str(ckpt) in str(e.value) and "\n" not in str(e.value)


def test_resume_from_other_version_is_refused(ckpt):
    _rewrite(ckpt, lambda c: c.update(version=99))
    with pytest.raises(ToolchainError, match="checkpoint version 99"):
        checkpoint.load(ckpt)


def test_out_of_range_weights_are_clamped_with_a_warning_naming_the_layer():
    spec, shape = CASES["skip_add"]
    model = graph(spec, shape)
    syn = model.nodes[0].synapses[0]
    with torch.no_grad():
        w = syn.weight_v if hasattr(syn, "weight_v") else syn.weight
        flat = w.view(-1)
        flat[:5] = 100.0  # 6400 on Loihi's scale: far past 254
    with pytest.warns(UserWarning, match=rf"layer 1 \({model.nodes[0].name}\): 5 of \d+ weights .* clamped"):
        net = build_netfile(model, time_steps=4, class_names=["a", "b", "c"])
    assert net.layers[0].synapses[0].weight.max() == loihi.WEIGHT_MAX
