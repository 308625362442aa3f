"""Checkpoints: atomic save, weights-only load with clear errors, the official DDPM layout, diffusers."""
import hashlib
import os
import re
from pathlib import Path

import pytest
import torch

from ddimlab import checkpoint as ck
from ddimlab import schedule, unet

# config.json of google/ddpm-cifar10-32 (the DDPM CIFAR-10 model as published for diffusers). Up types mirror
# the down types: diffusers' converter maps the official up.i to up_blocks.(3 - i), so 16×16 is up_blocks.2.
GOOGLE_DDPM_CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

TINY_CONFIGS = [
    dict(),  # the tiny preset
    dict(in_ch=2, out_ch=4, ch=16, ch_mult=(1, 2, 3), num_res_blocks=2, attn_resolutions=(8, 4), resolution=16,
         num_groups=4),
]


def inputs(net, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, r = net.config["in_ch"], net.config["resolution"]
    return torch.randn(batch, c, r, r, generator=g), torch.tensor([3, 871][:batch])


def assert_same_function(a, b, x, t, atol=1e-4):
    with torch.no_grad():
        ya = a(x, t)
        yb = b(x, t)
    ya, yb = getattr(ya, "sample", ya), getattr(yb, "sample", yb)
    assert ya.abs().mean() > 1e-3  # a non-trivial output, so agreement means something
    torch.testing.assert_close(ya, yb, atol=atol, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# save / load


def test_save_load_roundtrip(tmp_path):
    net = unet.tiny_unet()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 1, 16, 16), 5).square().mean().backward()
    opt.step()
    path = ck.save_checkpoint(tmp_path / "run" / "ckpt.pt", model=net.state_dict(), optimizer=opt.state_dict(),
                              step=7, config=net.config, rng=torch.get_rng_state())
    state = ck.load_checkpoint(path, required=("model", "optimizer", "step"))
    assert state["step"] == 7 and state["config"]["ch_mult"] == (1, 2, 2)
    assert all(torch.equal(state["model"][k], v) for k, v in net.state_dict().items())
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert sorted(os.listdir(path.parent)) == ["ckpt.pt"]  # no temporary file left behind
    with pytest.raises(ValueError, match="at least one keyword"):
        ck.save_checkpoint(tmp_path / "empty.pt")


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = ck.save_checkpoint(tmp_path / "ckpt.pt", step=1)

    def broken_save(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(path, step=2)
    monkeypatch.undo()
    assert ck.load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_ctrl_c_inside_a_checkpoint_write_waits_for_its_end(tmp_path, monkeypatch):
    """A second Ctrl-C while `train` wrote a checkpoint came inside torch's zip writer, which turned it into a
    RuntimeError, reported as "could not write ckpt.pt (is the disk full?)" (helper 99). The write now finishes, then
    the interrupt is delivered: a whole checkpoint and a KeyboardInterrupt."""
    import signal
    real_save, writes = torch.save, []

    class CtrlCMidway:                 # the file torch writes into, interrupted at its third block
        def __init__(self, f):
            self.f = f

        def write(self, b):
            writes.append(len(b))
            if len(writes) == 3:
                signal.raise_signal(signal.SIGINT)
            return self.f.write(b)

        def flush(self):
            return self.f.flush()

    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, CtrlCMidway(f)))
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)   # a background job starts with SIGINT ignored
    try:
        with pytest.raises(KeyboardInterrupt):
            ck.save_checkpoint(tmp_path / "ckpt.pt", weights=torch.arange(100_000.0), step=7)
    finally:
        signal.signal(signal.SIGINT, inherited)
    monkeypatch.undo()
    assert len(writes) > 3 and ck.load_checkpoint(tmp_path / "ckpt.pt")["step"] == 7
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        ck.load_checkpoint(tmp_path / "nope.pt")
    good = ck.save_checkpoint(tmp_path / "good.pt", model={"w": torch.randn(1000)}, step=3)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="truncated or corrupted"):
        ck.load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ck.CheckpointError, match="not a torch checkpoint but text"):
        ck.load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ck.CheckpointError, match=r"lacks the key\(s\) \['ema'\] \(it has \['model', 'step'\]\)"):
        ck.load_checkpoint(good, required=("model", "ema"))
    torch.save({"cfg": Path("x")}, tmp_path / "objects.pt")  # arbitrary objects: refused by weights_only
    with pytest.raises(ck.CheckpointError, match=r"refused: .* asks to run code when loaded \(it names pathlib"):
        ck.load_checkpoint(tmp_path / "objects.pt")


# ---------------------------------------------------------------------------------------------
# the official DDPM CIFAR-10 checkpoint


def test_official_file_loads_strictly_and_reproduces_outputs(tmp_path, randomize):
    torch.manual_seed(0)
    net = randomize(unet.cifar10_unet()).eval()
    path = tmp_path / ck.DDPM_CIFAR10_FILE
    torch.save(net.state_dict(), path)  # the official file is a plain state_dict
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    assert ck.md5sum(path) == md5

    loaded = ck.load_official_ddpm(path, verify_md5=True, expected_md5=md5)
    assert not loaded.training
    x, t = inputs(net, batch=1)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), net(x, t))

    with pytest.raises(ck.CheckpointError, match=f"md5 of .* is {md5}, expected {ck.DDPM_CIFAR10_MD5}"):
        ck.load_official_ddpm(path, verify_md5=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096])
    with pytest.raises(ck.CheckpointError, match="truncated"):
        ck.load_official_ddpm(path)


def test_official_state_dict_unwraps_prefixes_and_training_lists():
    sd = {"conv_in.weight": torch.ones(2), "conv_out.bias": torch.zeros(1)}
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    assert ck.official_state_dict(wrapped).keys() == sd.keys()
    ema = {k: v + 1 for k, v in sd.items()}
    states = [wrapped, {"state": {}, "param_groups": []}, 10, 5000, ema]  # ermongroup/ddim's training file
    assert torch.equal(ck.official_state_dict(states)["conv_in.weight"], ema["conv_in.weight"])
    assert torch.equal(ck.official_state_dict(states[:4])["conv_in.weight"], sd["conv_in.weight"])
    with pytest.raises(ck.CheckpointError, match="expected a state_dict"):
        ck.official_state_dict(42)


def test_wrong_network_is_rejected_with_what_differs(tmp_path):
    path = tmp_path / "tiny.ckpt"
    torch.save(unet.tiny_unet().state_dict(), path)
    with pytest.raises(ck.CheckpointError, match=r"missing key\(s\).*shape mismatch"):
        ck.load_official_ddpm(path)


# ---------------------------------------------------------------------------------------------
# diffusers' UNet2DModel


def test_google_ddpm_config_is_the_paper_model():
    cfg = ck.unet_config_from_diffusers(GOOGLE_DDPM_CIFAR10_CONFIG)
    assert cfg == {**unet.PRESETS["cifar10"], "dropout": 0.0, "out_ch": 3}
    assert {k: v for k, v in ck.diffusers_config(unet.PRESETS["cifar10"]).items()
            if k in GOOGLE_DDPM_CIFAR10_CONFIG} == {
        k: tuple(v) if isinstance(v, list) else v for k, v in GOOGLE_DDPM_CIFAR10_CONFIG.items()
        if not k.startswith("_")}


@pytest.mark.parametrize("change, match", [
    (dict(flip_sin_to_cos=True), "flip_sin_to_cos"),
    (dict(attention_head_dim=8), "multi-head"),
    (dict(downsample_padding=None), "downsample_padding"),
    (dict(up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"][::-1]), "mirror"),
    (dict(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]), "block types"),
])
def test_unsupported_diffusers_configs_raise(change, match):
    cfg = {**GOOGLE_DDPM_CIFAR10_CONFIG, **change}
    if change.get("downsample_padding", 0) is None:
        del cfg["downsample_padding"]  # omitted -> diffusers' default 1, which is not DDPM's
    with pytest.raises(ValueError, match=match):
        ck.unet_config_from_diffusers(cfg)


def _diffusers_model(config):
    diffusers = pytest.importorskip("diffusers")
    return diffusers.UNet2DModel(**ck.diffusers_config(config)).eval()


@pytest.mark.parametrize("config", [unet.PRESETS["cifar10"]] + TINY_CONFIGS, ids=["cifar10", "tiny", "odd"])
def test_diffusers_conversion_both_directions(config, randomize):
    config = {**unet.PRESETS["tiny"], **config} if config is not unet.PRESETS["cifar10"] else config
    ours = randomize(unet.UNet(**config), seed=1).eval()
    theirs = _diffusers_model(ours.config)
    x, t = inputs(ours, batch=1 if config is unet.PRESETS["cifar10"] else 2)

    # ddimlab -> diffusers
    theirs.load_state_dict(ck.to_diffusers(ours.state_dict()), strict=True)
    assert_same_function(ours, theirs, x, t)

    # diffusers (its own random weights) -> ddimlab
    randomize(theirs, seed=2)
    back = unet.UNet(**ours.config).eval()
    ck.load_state_strict(back, ck.from_diffusers(theirs.state_dict()))
    assert_same_function(back, theirs, x, t)

    # the renaming is a bijection that keeps every tensor
    again = ck.from_diffusers(ck.to_diffusers(ours.state_dict()))
    assert list(again) == list(ours.state_dict())
    assert all(torch.equal(again[k], v) for k, v in ours.state_dict().items())


def test_legacy_diffusers_attention_names(randomize):
    ours = randomize(unet.tiny_unet()).eval()
    new = ck.to_diffusers(ours.state_dict())
    legacy = {}
    for k, v in new.items():
        for old, now in [("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0")]:
            k = k.replace(f".{now}.", f".{old}.")
        legacy[k] = v
    assert any(".proj_attn." in k for k in legacy)
    back = ck.from_diffusers(legacy)
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_diffusers_folder_roundtrip(tmp_path, safe, randomize):
    theirs = randomize(_diffusers_model(unet.PRESETS["tiny"]), seed=3)
    theirs.save_pretrained(tmp_path / "pipe" / "unet", safe_serialization=safe)
    ours = ck.load_diffusers_folder(tmp_path / "pipe")  # a pipeline folder: its unet/ is found
    assert isinstance(ours, unet.UNet) and not ours.training
    x, t = inputs(ours)
    assert_same_function(ours, theirs, x, t)
    via_diffusers = ck.load_diffusers_folder(tmp_path / "pipe" / "unet", backend="diffusers")
    assert_same_function(ours, ck.eps_fn(via_diffusers), x, t)
    with pytest.raises(ValueError, match="backend must be"):
        ck.load_diffusers_folder(tmp_path / "pipe", backend="jax")


def test_save_diffusers_folder_loads_in_diffusers(tmp_path, randomize):
    diffusers = pytest.importorskip("diffusers")
    ours = randomize(unet.UNet(**{**unet.PRESETS["tiny"], **TINY_CONFIGS[1]}), seed=4).eval()
    cosine = schedule.make_alpha_bar("cosine", 400)         # not the linear 1000 steps a reader would assume
    folder = ck.save_diffusers_folder(ours, tmp_path / "export", cosine)
    theirs = diffusers.UNet2DModel.from_pretrained(folder).eval()
    x, t = inputs(ours)
    assert_same_function(ours, theirs, x, t)
    assert ck.load_diffusers_folder(folder).config == ours.config
    torch.testing.assert_close(ck.load_model(folder)[1], cosine, rtol=1e-12, atol=0)     # the schedule travels with it
    sched = diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    torch.testing.assert_close(sched.alphas_cumprod.double(), cosine, rtol=1e-6, atol=1e-9)   # diffusers: float32
    with pytest.raises(FileNotFoundError, match="neither ckpt.pt .* nor config.json"):
        ck.load_diffusers_folder(tmp_path)


def test_official_file_is_downloaded_once_md5_checked_and_never_half_written(server, tmp_path):
    from ddimlab.data import DownloadError

    body = bytes(range(256)) * 40
    server.routes["/ckpt"] = (body, "ok")
    md5 = hashlib.md5(body).hexdigest()
    path = ck.official_ddpm_file(tmp_path, url=server.url("/ckpt"), md5=md5, progress=False)
    assert path == tmp_path / "checkpoints" / "model-790000.ckpt" and path.read_bytes() == body
    assert ck.official_ddpm_file(tmp_path, url=server.url("/ckpt"), md5=md5, progress=False) == path
    assert server.requests == ["/ckpt"]  # the second call used the cache

    other = tmp_path / "other"
    with pytest.raises(DownloadError, match="md5 mismatch"):
        ck.official_ddpm_file(other, url=server.url("/ckpt"), md5="0" * 32, progress=False)
    server.routes["/cut"] = (body, "truncate")
    with pytest.raises(DownloadError):
        ck.official_ddpm_file(other, url=server.url("/cut"), md5=md5, progress=False)
    assert not (other / "checkpoints").exists()                # no half file, nor the folder made for it


def test_a_run_on_a_schedule_this_ddimlab_does_not_know_is_refused_naming_the_known_ones(tmp_path):
    """A run saved with a schedule name this ddimlab lacks (a newer one's, or an edited file): train.load_trained warned
    that the settings were "returned as saved", then failed with schedule.beta_schedule's "unknown schedule 'sigmoid';
    choose one of ...", and load_model (so `ddimlab sample`) with that line alone, naming neither the file nor why.
    Both now raise one CheckpointError naming the file, the schedule and the known ones, with no warning first. A
    fallback to the linear table is not offered: it samples the network on another schedule than its own, to finite,
    wrong images. A run on a known schedule loads with its own table."""
    import dataclasses
    import warnings

    from ddimlab import train

    config = train.make_config("digits", {"ch": 8, "ch_mult": (1,), "attn_resolutions": (), "num_groups": 4,
                                          "schedule": "cosine", "T": 400})
    net = unet.UNet(in_ch=1, **{k: getattr(config, k) for k in unet.CONFIG_KEYS})
    state = {"model": net.state_dict(), "ema": net.state_dict(), "config": dataclasses.asdict(config), "in_ch": 1, "step": 1}
    ck.save_checkpoint(tmp_path / "own.pt", **state)
    assert torch.equal(train.load_trained(tmp_path / "own.pt")[0].alpha_bar, schedule.make_alpha_bar("cosine", 400))
    assert torch.equal(ck.load_model(tmp_path / "own.pt")[1], schedule.make_alpha_bar("cosine", 400))
    for name, T, said in (("sigmoid", 400, "the noise schedule 'sigmoid', which this ddimlab does not know (it knows "
                                           "linear, cosine, quadratic); load it with the ddimlab that trained it"),
                          ("linear", "many", "the linear schedule with T = 'many', which this ddimlab cannot build")):
        path = ck.save_checkpoint(tmp_path / "new.pt", **{**state, "config": {**state["config"], "schedule": name, "T": T}})
        for load in (train.load_trained, ck.load_model):
            with warnings.catch_warnings():
                warnings.simplefilter("error")            # no "returned as saved" before the error
                with pytest.raises(ck.CheckpointError, match=f"^{re.escape(str(path))} was trained on {re.escape(said)}"):
                    load(tmp_path / "new.pt")


def test_round_44_a_file_of_another_kind_is_not_called_truncated(tmp_path):
    """A text file loaded as a checkpoint said "(3 bytes) is not a readable torch checkpoint; it is probably truncated or
    corrupted (an interrupted download or copy?): 105" (torch's unpickler reading "hi" as opcodes). A file that does not
    begin as torch's zip archive or its older pickle is now said to be another kind of file, quoted where it is text;
    a torch file cut short, in either format, is still told it is truncated."""
    cases = {"hi.pt": b"hi\n", "lfs.pt": b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n",
             "page.pt": ("<p>" + "ü" * 40).encode(),             # the 64 bytes read end in half a ü: still text
             "array.npy": b"\x93NUMPY\x01\x00" + bytes(100)}
    said = {"hi.pt": "but text (beginning 'hi')", "lfs.pt": "but text (beginning 'version https://git-lfs.github.com/spec/v1')",
            "page.pt": f"but text (beginning '<p>{'ü' * 30}')",
            "array.npy": "(it begins b'\\x93NUMPY\\x01\\x00')"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ck.CheckpointError) as e:
            ck.load_checkpoint(tmp_path / name)
        assert str(e.value) == (f"{tmp_path / name} is not a torch checkpoint {said[name]}: torch.save writes a zip "
                                f"archive (before PyTorch 1.6, a pickle); pass {ck.LOADABLE}"), str(e.value)
    for zipped in (True, False):
        path = tmp_path / f"whole_{zipped}.pt"
        torch.save({"w": torch.arange(1000.0)}, path, _use_new_zipfile_serialization=zipped)
        data = path.read_bytes()
        (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
        with pytest.raises(ck.CheckpointError, match=r"is not a readable torch checkpoint; it is (probably )?truncated"):
            ck.load_checkpoint(tmp_path / "cut.pt")           # (round 47: the old format cut in its data: "it is truncated")


def test_round_45_a_plain_pickle_is_said_to_be_one_not_truncated(tmp_path):
    """A dict written with pickle.dump, loaded as a checkpoint, was "probably truncated or corrupted (an interrupted
    download or copy?): Invalid magic number" (protocol 2), or "truncated, corrupted, or not a torch file" after torch's
    two-line warning "Detected pickle protocol 4 ..." (protocols 3 to 5, Python's default 4). It is now said to be a
    pickle, not torch.save's file, with no warning of torch's. It is refused, not loaded: torch's weights-only reader
    takes none, and a pickled tensor is rebuilt by running code. torch's own files load as before, and one cut short,
    even inside its first value, is still told it is truncated."""
    import pickle
    import warnings

    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        for name, obj in (("numbers", {"step": 3, "lr": [2e-4]}), ("tensor", {"w": torch.zeros(3)})):
            path = tmp_path / f"{name}_{protocol}.pkl"
            with open(path, "wb") as f:
                pickle.dump(obj, f, protocol=protocol)
            with warnings.catch_warnings(record=True) as shown, pytest.raises(ck.CheckpointError) as e:
                warnings.simplefilter("always")
                ck.load_checkpoint(path)
            assert str(e.value) == (f"{path} is a Python pickle (pickle.dump), not a torch checkpoint (torch.save writes "
                                    f"a zip archive; before PyTorch 1.6, a pickle that begins with torch's magic number): "
                                    f"save the weights with torch.save, or pass {ck.LOADABLE}"), (protocol, str(e.value))
            assert [str(w.message) for w in shown] == [], protocol
    torch.save({"w": torch.arange(3.0)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(ck.load_checkpoint(tmp_path / "old.pt")["w"], torch.arange(3.0))
    data = (tmp_path / "old.pt").read_bytes()
    rebuild = data.index(b"_rebuild_tensor_v2")     # the cut at half the file fell inside this name when its length
    for size in (3, 6, 14, 18, 28, rebuild - 3, rebuild + 10, len(data) // 2, len(data) - 4):   # moved (struct.error: 18, 28)
        (tmp_path / "cut.pt").write_bytes(data[:size])
        with pytest.raises(ck.CheckpointError, match=r"is not a readable torch checkpoint[;( ].*truncated"):
            ck.load_checkpoint(tmp_path / "cut.pt")


def test_round_45_a_torchscript_or_other_zip_archive_is_said_to_be_one_not_truncated(tmp_path):
    """A whole zip archive that torch.save did not write was "probably truncated or corrupted (an interrupted download or
    copy?): [enforce fail at inline_container.cc:180]"; a TorchScript archive (torch.jit.save) printed torch's two-line
    warning "'torch.load' received a zip file that looks like a TorchScript archive ..." and then "probably truncated
    ...: Cannot use weights_only=True with TorchScript archives". Each is now said for what it is, in one line and
    without torch's warning; a torch.save file and a TorchScript archive cut short are still told they are truncated."""
    import warnings
    import zipfile

    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as z:
        for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
            z.writestr(name, "hi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)        # torch 2.10+: TorchScript is deprecated
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    said = {"notes.zip": "is a zip archive but not torch.save's (it holds no data.pkl; it holds a.txt, b.txt, c.txt and 1 "
                         f"more): pass {ck.LOADABLE}",
            "scripted.pt": "is a TorchScript archive (torch.jit.save), not a checkpoint of weights: save the network's "
                           f"state_dict with torch.save, or pass {ck.LOADABLE}"}
    for name, rest in said.items():
        with warnings.catch_warnings(record=True) as shown, pytest.raises(ck.CheckpointError) as e:
            warnings.simplefilter("always")
            ck.load_checkpoint(tmp_path / name)
        assert str(e.value) == f"{tmp_path / name} {rest}", str(e.value)
        assert [str(w.message) for w in shown] == [], name
    ck.save_checkpoint(tmp_path / "good.pt", model={"w": torch.arange(4.0)})
    assert torch.equal(ck.load_checkpoint(tmp_path / "good.pt")["model"]["w"], torch.arange(4.0))
    for name in ("good.pt", "scripted.pt"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
        with pytest.raises(ck.CheckpointError, match=r"is not a readable torch checkpoint; it is probably truncated"):
            ck.load_checkpoint(tmp_path / "cut.pt")


def test_round_45_load_checkpoints_own_arguments_are_named_not_blamed_on_the_file(tmp_path):
    """load_checkpoint(path, map_location="gpu") said the file was "probably truncated or corrupted (an interrupted
    download or copy?): don't know how to restore data location of torch.storage.UntypedStorage (tagged with gpu)", and
    so did map_location="cuda" on a machine without CUDA; required=5 was "'int' object is not iterable". A device name
    is now checked as every --device is (`devices.resolve`), and `required` must be a key or a list of keys."""
    path = ck.save_checkpoint(tmp_path / "ok.pt", model={"w": torch.ones(2)}, step=1)
    with pytest.raises(ck.devices.DeviceError, match=r"^unknown device 'gpu': use auto, cpu, cuda, cuda:N or mps"):
        ck.load_checkpoint(path, map_location="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ck.devices.DeviceError, match=r"cuda: .*(no CUDA support|sees no GPU)"):
            ck.load_checkpoint(path, map_location="cuda")
    with pytest.raises(TypeError, match=r"^required must be a key or a list of keys, e.g. \('model', 'step'\), got 5$"):
        ck.load_checkpoint(path, required=5)
    for kw in (dict(map_location="cpu", required="step"), dict(map_location=torch.device("cpu"), required=["model"]),
               dict(map_location="auto")):
        assert ck.load_checkpoint(path, **kw)["step"] == 1


def test_round_46_an_old_format_file_of_pickle_protocol_4_is_said_to_be_one_not_truncated(tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False, pickle_protocol=4) (or 5) writes a whole file that torch's
    weights-only loader cannot read (its pickles open with FRAME, opcode 149, which that reader lacks): it was told
    "not a readable torch checkpoint (truncated, corrupted, or not a torch file)". It is now said for what it is, with how
    to convert it; the same file cut inside its pickles (or before its storages' sizes) is still told truncated, a
    1-byte file too, and protocols 2 and 3 still load."""
    import pickletools
    import warnings

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float64), "step": 3}
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"old{protocol}.pt"
        torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
        if protocol < 4:
            with warnings.catch_warnings():
                warnings.simplefilter("error")                       # torch's "Detected pickle protocol" not shown
                loaded = ck.load_checkpoint(path)
            assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"]), protocol
            continue
        with pytest.raises(ck.CheckpointError) as e:
            ck.load_checkpoint(path)
        assert str(e.value) == (f"{path} is a torch checkpoint in the format before PyTorch 1.6 pickled with protocol "
                                f"{protocol}, which torch's weights-only loader cannot read (it reads 2 and 3), and ddimlab "
                                f"loads no file by running its code: save the weights again where they were made, with "
                                f"torch.save's default format; or pass {ck.LOADABLE}"), str(e.value)
        assert "weights_only=False" not in str(e.value)          # never advised (issue 12, item 10)
        data = path.read_bytes()
        with open(path, "rb") as f:                                    # the end of the storage keys' pickle, the fifth
            for _ in range(5):
                list(pickletools.genops(f))
            keys = f.tell()
        assert len(data) - keys == 2 * 8 + 6 * 4 + 3 * 8                 # then each storage's size and its bytes
        for size in (1, 2, 3, 12, 30, data.index(b"_rebuild_tensor_v2") + 5, keys - 1, keys, keys + 15):
            (tmp_path / "cut.pt").write_bytes(data[:size])
            with pytest.raises(ck.CheckpointError, match=r"is not a readable torch checkpoint[;( ].*truncated"):
                ck.load_checkpoint(tmp_path / "cut.pt")


def test_round_47_an_old_format_file_cut_inside_its_tensors_data_is_said_truncated(tmp_path):
    """An old-format torch file of pickle protocol 4 or 5 cut inside its storages' data was told it is a whole file of
    that protocol ("which torch's weights-only loader cannot read ... save the weights again"): only the first storage's
    size was looked for. Each storage's count and bytes are now walked (`_legacy_whole`). Cut at every byte after the
    pickles, in each protocol, with storages of five element sizes and one shared by two tensors, the file is said to be
    truncated; whole, protocols 2 and 3 load and 4 and 5 are named as before."""
    import pickletools

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float64), "n": torch.arange(2),
             "h": torch.ones(2, dtype=torch.bfloat16), "m": torch.tensor([True, False, True]),
             "z": torch.ones(2, dtype=torch.complex128), "e": torch.zeros(0), "step": 3}
    state["view"] = state["w"][1]                           # the same storage as w
    truncated = (r"\(\d+ bytes?\) is not a readable torch checkpoint; it is truncated: a torch file in the format "
                 r"before PyTorch 1.6 whose tensors' data stops short")
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"old{protocol}.pt"
        torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
        if protocol < 4:
            loaded = ck.load_checkpoint(path)
            assert all(torch.equal(loaded[k], v) for k, v in state.items() if k != "step"), protocol
        else:
            with pytest.raises(ck.CheckpointError, match=f"pickled with protocol {protocol}, which torch's weights-only"):
                ck.load_checkpoint(path)
        data = path.read_bytes()
        with open(path, "rb") as f:
            for _ in range(5):
                list(pickletools.genops(f))
            keys = f.tell()
        assert len(data) - keys == 7 * 8 + 6 * 4 + 3 * 8 + 2 * 8 + 2 * 2 + 3 * 1 + 2 * 16 + 0   # counts, then bytes
        for size in range(keys, len(data)):
            (tmp_path / "cut.pt").write_bytes(data[:size])
            with pytest.raises(ck.CheckpointError, match=truncated):
                ck.load_checkpoint(tmp_path / "cut.pt")


def test_round_47_a_file_of_one_to_three_bytes_is_not_quoted_as_text(tmp_path):
    """A 1-byte checkpoint "P" (the first byte of a zip archive, as torch.save writes) was "not a torch checkpoint but
    text (beginning 'P')", and the 1-byte start of an old-format file "(1 bytes) is not a readable torch checkpoint".
    The start of a zip archive cut short is now left to the truncated line, and one byte is "1 byte"."""
    for head in (b"P", b"PK", b"PK\x03"):
        (tmp_path / "cut.pt").write_bytes(head)
        with pytest.raises(ck.CheckpointError, match=r"not a readable torch checkpoint.*truncated") as e:
            ck.load_checkpoint(tmp_path / "cut.pt")
        assert "text" not in str(e.value), head
    (tmp_path / "cut.pt").write_bytes(b"\x80")
    with pytest.raises(ck.CheckpointError, match=r"cut.pt \(1 byte\) is not a readable torch checkpoint; it is probably "
                                                 r"truncated"):
        ck.load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_bytes(b"Q")                  # a byte that begins neither: still named for what it is
    with pytest.raises(ck.CheckpointError, match=r"is not a torch checkpoint but text \(beginning 'Q'\)"):
        ck.load_checkpoint(tmp_path / "text.pt")


def test_round_47_a_checkpoint_the_os_will_not_read_is_not_called_truncated(tmp_path, monkeypatch):
    """load_checkpoint of a file its user may not read raised CheckpointError "... is probably truncated or corrupted
    (an interrupted download or copy?): [Errno 13] Permission denied": the OS's error is now raised as it is (a
    PermissionError, which the commands print in words). Made unreadable by chmod, or, for root, by torch's open
    refusing it as the OS would."""
    import builtins
    import errno

    path = ck.save_checkpoint(tmp_path / "ok.pt", model={"w": torch.ones(2)})
    if getattr(os, "geteuid", lambda: 1)() != 0:
        path.chmod(0)
    else:
        real_open = builtins.open

        def refusing_open(file, *a, **k):
            if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) == os.path.realpath(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), file)
            return real_open(file, *a, **k)
        monkeypatch.setattr(builtins, "open", refusing_open)
    try:
        with pytest.raises(PermissionError) as e:
            ck.load_checkpoint(path)
        assert not isinstance(e.value, ck.CheckpointError) and e.value.errno == errno.EACCES
    finally:
        path.chmod(0o644)


def test_round_47_eps_fn_called_directly_names_meta_weights_and_a_meta_x():
    """checkpoint.eps_fn(net)(x, t) of a network built on the meta device, called directly rather than through a sampler
    (which checks at its entry), failed inside the network with torch's "Tensor on device meta is not on the expected
    device cpu!"; a meta x with "User specified an unsupported autocast device_type 'meta'". Both are ValueErrors now,
    the first as a sampler says it (`samplers.check_weights`); the network with values still runs."""
    with torch.device("meta"):
        net = unet.UNet(**unet.PRESETS["tiny"])
    x = torch.zeros(2, unet.PRESETS["tiny"]["in_ch"], 8, 8)
    with pytest.raises(ValueError, match=r"^eps_fn\(model\)'s network \(UNet\) has weights on the meta device, which "
                                         r"hold shapes but no values: load its weights"):
        ck.eps_fn(net)(x, 3)
    real = unet.UNet(**unet.PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"^x is on the meta device, which holds shapes but no values"):
        ck.eps_fn(real)(x.to("meta"), 3)
    assert ck.eps_fn(real)(x, 3).shape == x.shape
