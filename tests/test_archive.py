"""The one archive guard (adapt.archive) and the adapter config schema: refused before anything is
inflated, with a message naming the entry or the field, and the same refusals for every zip."""

import json
import os
import zipfile

import pytest
from conftest import tiny_backbone

from adapt.archive import ArchiveError, ArchiveLimits, safe_extract
from adapt.data import DatasetError, load_dataset
from adapt.export import AdapterError, read_adapter, save_adapter, zip_adapter
from adapt.methods import attach


@pytest.fixture(scope="module")
def adapter_zip(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapter")
    folder = save_adapter(attach(tiny_backbone("sam"), "parser"), tmp / "a", task="dichotomous")
    return zip_adapter(folder, tmp / "a.zip")


def bomb(path, mib=24):
    """A small zip holding one entry of zeros that inflates ~1000 times."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("adapter_model.safetensors", "w", force_zip64=True) as f:
            block = bytes(1 << 20)
            for _ in range(mib):
                f.write(block)
        z.writestr("adapter_config.json", "{}")
    return path


def test_a_zip_bomb_is_refused_from_its_directory(tmp_path):
    path = bomb(tmp_path / "bomb.zip")
    assert path.stat().st_size < 200_000
    with pytest.raises(ArchiveError, match="claims to inflate .* times .* likely zip bomb"):
        safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(AdapterError, match="likely zip bomb"):
        read_adapter(path)


def many_small(path, entries=1200, size=(1 << 20) - 1024):
    """A zip of many entries each just under the per-entry ratio floor: none is a bomb alone."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(entries):
            z.writestr(f"im/{i:04d}.png", bytes(size))
    return path


def test_many_small_entries_are_judged_as_one_archive(tmp_path):
    path = many_small(tmp_path / "many.zip", entries=300)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ArchiveError, match="together claim to inflate .* times .* likely zip bomb"):
        safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_duplicate_entry_names_are_refused(tmp_path):
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr("im/a.png", b"first")
        z.writestr("im/a.png", b"second")
        z.writestr("./gt/b.png", b"x")
        z.writestr("gt//b.png", b"y")
    with pytest.raises(ArchiveError) as e:
        safe_extract(path, tmp_path / "out")
    assert [name for name, _ in e.value.problems] == ["im/a.png", "gt//b.png"]
    assert "two entries of this name" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_dataset_bomb_names_the_entry(tmp_path):
    with zipfile.ZipFile(tmp_path / "d.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images/a.png", bytes(8 << 20))
    with pytest.raises(DatasetError, match="images/a.png: zip entry claims to inflate"):
        load_dataset(tmp_path / "d.zip")


def test_total_size_and_entry_count_limits_come_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(4):
            z.writestr(f"f{i}.bin", os.urandom(600_000))  # incompressible: no ratio refusal
    assert ArchiveLimits.from_env() == ArchiveLimits()
    monkeypatch.setenv("ADAPT_MAX_UNZIPPED_MB", "2")
    with pytest.raises(ArchiveError, match=r"would unpack to 2 MiB; at most 2 MiB"):
        safe_extract(path, tmp_path / "out")
    monkeypatch.setenv("ADAPT_MAX_UNZIPPED_MB", "100")
    monkeypatch.setenv("ADAPT_MAX_ZIP_ENTRIES", "3")
    with pytest.raises(ArchiveError, match="the zip has 4 entries; at most 3 are accepted"):
        safe_extract(path, tmp_path / "out")
    monkeypatch.delenv("ADAPT_MAX_ZIP_ENTRIES")
    assert len(safe_extract(path, tmp_path / "out")) == 4


def test_a_lying_header_is_refused_and_nothing_is_left(tmp_path):
    """An entry that declares 1,000 bytes and holds 300,000: extraction stops at the declared size
    and the zip is refused as corrupt, with the half-extracted folder removed."""
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.bin", os.urandom(300_000))
    raw = bytearray(path.read_bytes())
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    raw[local + 22 : local + 26] = (1000).to_bytes(4, "little")  # uncompressed size, local header
    raw[central + 24 : central + 28] = (1000).to_bytes(4, "little")  # and in the central directory
    path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="could not be extracted"):
        safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapter_zips_get_the_same_refusals_as_dataset_zips(tmp_path, adapter_zip):
    evil = tmp_path / "link.zip"
    with zipfile.ZipFile(adapter_zip) as src, zipfile.ZipFile(evil, "w") as z:
        for info in src.infolist():
            z.writestr(info, src.read(info))
        link = zipfile.ZipInfo("README.md.link")
        link.external_attr = (0o120777 << 16) | 0x20  # a symbolic link entry
        z.writestr(link, "/etc/passwd")
    with pytest.raises(AdapterError, match="README.md.link: zip entry is a symbolic link"):
        read_adapter(evil)
    read_adapter(adapter_zip)  # the honest zip still loads


def rewrite_config(adapter_zip, tmp_path, edit):
    with zipfile.ZipFile(adapter_zip) as z:
        cfg = json.loads(z.read("adapter_config.json"))
        files = {n: z.read(n) for n in z.namelist()}
    cfg = edit(cfg)
    files["adapter_config.json"] = json.dumps(cfg).encode()
    out = tmp_path / "edited.zip"
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out


MALFORMED = {
    "version as a string": (lambda c: {**c, "format_version": "1"}, "format_version must be an integer"),
    "no base model": (lambda c: {k: v for k, v in c.items() if k != "base_model"}, "base_model must be an object"),
    "unknown backbone": (lambda c: {**c, "base_model": {"name": "sam-vit-z", "weights_id": "x"}}, "base_model.name"),
    "counts as strings": (lambda c: {**c, "counts": {"adapter": "12"}}, "counts must be an object of integers"),
    "a JSON list": (lambda c: [c], "the config must be a JSON object, not 'list'"),
    "an option the method does not take": (
        lambda c: {**c, "config": {"evil": 1}},
        "config does not fit method 'parser': method 'parser' has no option",
    ),
    "an unknown method": (lambda c: {**c, "method": "magic"}, "method must be one of"),
    "an unknown task": (lambda c: {**c, "task": "depth"}, "task must be null or one of"),
    "classes not names": (lambda c: {**c, "classes": [1, 2]}, "classes must be null or a list of names"),
    "classes on a binary task": (
        lambda c: {**c, "classes": ["background", "cat"]},
        "a dichotomous adapter has no classes",
    ),
    "metrics as a string": (lambda c: {**c, "metrics": "good"}, "metrics must be an object"),
    "metric values as strings": (
        lambda c: {**c, "metrics": {"adapted_iou": "0.9"}},
        "metrics must be an object of numbers",
    ),
    "an option of the wrong type": (lambda c: {**c, "config": {"reparam": 3}}, "option 'reparam' must be a string"),
    "a boolean for a number": (lambda c: {**c, "config": {"coefficient_lr_scale": True}}, "must be a number"),
}


def rewrite_tensors(adapter_zip, tmp_path, edit):
    """The adapter zip with its tensors edited (`edit` takes and returns the name -> tensor dict)."""
    import torch  # noqa: F401  (safetensors.torch needs it loaded)
    from safetensors.torch import load, save

    with zipfile.ZipFile(adapter_zip) as z:
        files = {n: z.read(n) for n in z.namelist()}
    files["adapter_model.safetensors"] = save(edit(load(files["adapter_model.safetensors"])))
    out = tmp_path / "edited.zip"
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out


def _first(tensors, change):
    name = sorted(tensors)[0]
    return {**tensors, name: change(tensors[name])}


BAD_TENSORS = {
    "a missing tensor": (lambda t: dict(sorted(t.items())[1:]), "1 missing"),
    "an extra tensor": (lambda t: {**t, "evil": t[sorted(t)[0]].clone()}, "1 unexpected"),
    "a wrong shape": (lambda t: _first(t, lambda x: x.reshape(-1)[:-1].clone()), "has shape"),
    "half precision": (lambda t: _first(t, lambda x: x.half()), "is torch.float16, expected torch.float32"),
    "integers": (lambda t: _first(t, lambda x: x.long()), "is torch.int64, expected torch.float32"),
    "NaN": (lambda t: _first(t, lambda x: x * float("nan")), "NaN or infinite"),
    "infinity": (lambda t: _first(t, lambda x: x + float("inf")), "NaN or infinite"),
}


@pytest.mark.parametrize("case", BAD_TENSORS, ids=list(BAD_TENSORS))
def test_adapter_tensors_are_checked_when_read(tmp_path, adapter_zip, case):
    """Names, shapes, dtypes and finiteness against the method's own parameters, at load: nothing
    loads that would fail at predict time or predict an empty mask silently."""
    edit, message = BAD_TENSORS[case]
    with pytest.raises(AdapterError, match=message) as e:
        read_adapter(rewrite_tensors(adapter_zip, tmp_path, edit))
    assert "/tmp" not in str(e.value)  # the user's file names, not the server's temporary paths


def test_a_deeply_nested_config_gets_its_own_message(tmp_path, adapter_zip):
    deep = "[" * 100_000 + "]" * 100_000
    with zipfile.ZipFile(adapter_zip) as z:
        files = {n: z.read(n) for n in z.namelist()}
    files["adapter_config.json"] = deep.encode()
    out = tmp_path / "deep.zip"
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with pytest.raises(AdapterError, match="nested too deeply"):
        read_adapter(out)


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_adapter_config_is_refused_at_load(tmp_path, adapter_zip, case):
    edit, message = MALFORMED[case]
    with pytest.raises(AdapterError, match=message):
        read_adapter(rewrite_config(adapter_zip, tmp_path, edit))
