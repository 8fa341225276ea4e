"""Generated DDD17-format scenes and the `toolchain data` commands."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from toolchain.cli import main
from toolchain.core.errors import ToolchainError
from toolchain.data.synth import synthesize


def digest(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_names_dtypes_and_shapes_match_ddd17(tiny_ddd17):
    ev = sorted(p.name for p in (tiny_ddd17 / "events" / "train").iterdir())
    assert ev == [f"rec100_export_{i}.npy" for i in range(6)]
    assert sorted(p.name for p in (tiny_ddd17 / "labels" / "test").iterdir()) == [
        f"rec900_export_{i}.png" for i in range(3)]
    a = np.load(tiny_ddd17 / "events" / "train" / "rec100_export_0.npy")
    assert a.shape == (48, 80, 6) and a.dtype == np.float32
    assert a[..., :2].sum() > 100 and np.all(a[..., 2:] >= 0) and np.all(a[..., 2:] <= 1)
    with Image.open(tiny_ddd17 / "labels" / "train" / "rec100_export_0.png") as im:
        assert im.mode == "L" and im.size == (80, 48)
        lab = np.asarray(im)
    assert set(np.unique(lab)) <= {0, 1, 2, 3, 4, 5, 255}
    assert {0, 1} <= set(np.unique(lab))  # road and buildings/sky in every street


def test_generation_is_deterministic_per_seed(tmp_path):
    a = synthesize(tmp_path / "a", 2, 1, 32, 48, seed=5, progress=False)
    b = synthesize(tmp_path / "b", 2, 1, 32, 48, seed=5, progress=False)
    c = synthesize(tmp_path / "c", 2, 1, 32, 48, seed=6, progress=False)
    assert digest(a) == digest(b) != digest(c)


def test_events_concentrate_on_textured_classes(tiny_ddd17):
    """Labels are learnable from events: foliage fires far more than sky."""
    rate = {c: [] for c in range(6)}
    for p in (tiny_ddd17 / "events" / "train").glob("*.npy"):
        counts = np.load(p)[..., :2].sum(-1)
        lab = np.asarray(Image.open(tiny_ddd17 / "labels" / "train" / p.with_suffix(".png").name))
        for c in rate:
            if (lab == c).any():
                rate[c].append(counts[lab == c].mean())
    nature, flat_or_sky = np.mean(rate[3]), min(np.mean(rate[0]), np.mean(rate[1]))
    assert nature > 2 * flat_or_sky


def test_existing_output_is_kept_unless_forced(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ToolchainError, match="already exists"):
        synthesize(out, 1, 0, 16, 16, progress=False)
    assert (out / "keep.txt").exists()
    synthesize(out, 1, 0, 16, 16, force=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "synth.yaml").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_cli_synth_then_check_prints_figures_and_writes_gallery(tmp_path, capsys):
    out = tmp_path / "set"
    main(["data", "synth", "--out", str(out), "--n-train", "3", "--n-test", "2", "--height", "40", "--width",
          "64", "--seed", "1", "--raw-events"])
    assert (out / "raw" / "test" / "rec900_export_1.npz").is_file()
    png = tmp_path / "g.png"
    main(["data", "check", str(out), "--out", str(png)])
    text = capsys.readouterr().out
    assert "train" in text and "construction+sky" in text and "pos count" in text
    train_line = next(line for line in text.splitlines() if line.startswith("train "))
    assert train_line.split()[-1] == "3"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_cli_check_stops_on_bad_file_or_skips_with_count(tmp_path, tiny_ddd17, capsys):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(tiny_ddd17, root)
    bad = root / "labels" / "train" / "rec100_export_3.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(SystemExit) as exit_:
        main(["data", "check", str(root)])
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert "rec100_export_3.png" in err and "Traceback" not in err
    main(["data", "check", str(root), "--skip-bad", "--out", str(tmp_path / "g.png")])
    out = capsys.readouterr().out
    assert "skipped 1 bad sample(s)" in out
    assert next(line for line in out.splitlines() if line.startswith("train ")).split()[-1] == "5"
