"""Loading and saving networks: the one way to load any checkpoint, and the one model adapter.

- `load_model(path)` → (network in eval mode, ᾱ float64): a ddimlab training run (`ckpt.pt` or its run
  folder; EMA weights by default), the official DDPM CIFAR-10 file `model-790000.ckpt` (or the name
  `ddpm-cifar10`, downloaded once, md5-checked), or a diffusers `UNet2DModel` folder.
- `eps_fn(model)`: any network (ddimlab's `UNet`, diffusers' `UNet2DModel`) or callable as the samplers'
  `eps(x, t)`: no gradients, optional bf16 autocast on CUDA, t broadcast to the batch, ε̂ in x's dtype.
- `save_checkpoint` / `load_checkpoint`: dicts of tensors and plain values, written atomically and read
  with `torch.load(weights_only=True)`: a file that asks to run code when unpickled is refused.
- `to_diffusers` / `from_diffusers`: the official ↔ diffusers state_dict layouts (the same function;
  tests/test_checkpoint.py compares outputs both ways); `official_layout()` lists the official keys and
  shapes (shipped with the package). Notebook 06 §1 uses the layout; notebook 07 §7 loads the checkpoint.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import re
import struct
import sys
import warnings
import zipfile
from importlib import resources
from pathlib import Path

import torch

from . import devices, schedule
from . import unet as unet_mod
from .checks import as_real, check_bool, check_int, check_values
from .data import cache_folder, download, require_files
from .files import atomic_write, folder_removed_on_error, interrupts_deferred, md5sum, replaced_together, unresolved_link
from .samplers import check_weights

DDPM_CIFAR10_FILE = "model-790000.ckpt"
DDPM_CIFAR10_MD5 = "1fa350b952534ae442b1d5235cce5cd3"
DDPM_CIFAR10_URL = "https://heibox.uni-heidelberg.de/f/2e4f01e2d9ee49bab1d5/?dl=1"  # where the DDIM code gets it
OFFICIAL_NAME = "ddpm-cifar10"  # what `--checkpoint` accepts in place of a path
LOADABLE = f"a ckpt.pt or run folder, model-790000.ckpt, `{OFFICIAL_NAME}` or a diffusers UNet2DModel folder"  # load_model


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, wrong checksum, or wrong contents."""


# ---------------------------------------------------------------------------------------------
# ddimlab checkpoints


def save_checkpoint(path, **state) -> Path:
    """Write `state` (tensors, state_dicts, numbers, strings, lists, dicts) to `path` atomically; Ctrl-C and SIGTERM
    wait for the write's end (torch's zip writer turns one that comes inside it into a RuntimeError)."""
    if not state:
        raise ValueError("save_checkpoint needs at least one keyword, e.g. save_checkpoint(path, model=sd, step=0)")
    _check_plain(state, "state")                     # before the write: it would replace a good file with a refused one
    try:
        with interrupts_deferred():
            return atomic_write(path, lambda f: torch.save(state, f), fsync=True)
    except RuntimeError as e:     # torch's zip writer reports a failed write (e.g. a full disk) as a RuntimeError
        raise OSError(f"could not write {path} (is the disk full?): {str(e).splitlines()[0]}") from e


_PLAIN = (torch.Tensor, torch.Size, torch.dtype, torch.device, str, bytes, int, float, complex, bool, type(None))


def _check_plain(obj, where: str) -> None:
    """`obj` is made of what weights-only loading reads back (tensors, numbers, strings, None in dicts, lists and
    tuples); anything else, e.g. a numpy scalar from `np.int64(5)`, is a TypeError naming where it sits."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key {k!r} of type {type(k).__name__}; checkpoints take str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}, which weights-only loading refuses "
                        f"(so would load_checkpoint); convert it, e.g. int(v), float(v) or torch.as_tensor(v)")


def load_checkpoint(path, map_location="cpu", required=(), mmap: bool = False) -> dict:
    """Read a checkpoint written by `save_checkpoint` (or any weights-only torch file); mmap=True maps its tensors
    instead of reading them, for a caller that needs the plain values only (`train.resumed_config`).

    Raises FileNotFoundError if `path` does not exist, the OS's OSError where it may not be read (PermissionError), and
    CheckpointError if it is truncated, corrupted, asks to run code when unpickled, or lacks a key named in `required`
    (the error names them).
    """
    mmap = check_bool("mmap", mmap)
    required = (required,) if isinstance(required, str) else required      # one key, not its letters
    if not isinstance(required, (list, tuple, set, frozenset)):             # else "'int' object is not iterable"
        raise TypeError(f"required must be a key or a list of keys, e.g. ('model', 'step'), got {required!r}")
    if isinstance(map_location, str):      # "gpu", or "cuda" on a machine without one: not the file's fault
        map_location = devices.resolve(map_location)
    state = _torch_load(path, map_location, mmap)
    if required:
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict with keys {list(required)}")
        missing = [k for k in required if k not in state]
        if missing:
            raise CheckpointError(f"{path} lacks the key(s) {missing} (it has {sorted(state)}); "
                                  f"is it a checkpoint of another kind?")
    return state


def _utf8_name(path) -> bool:
    """Whether torch can map the file: it hands the name to C++ as UTF-8, which a name holding bytes that are not UTF-8
    (any non-ASCII name under a C locale, a Latin-1 name on a UTF-8 system) cannot be, so such a file is read whole
    (a resume called its checkpoint "truncated or corrupted" and advised --overwrite)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_other_formats(path: Path) -> None:
    """A file that fails to load and does not even begin as a torch file is said to be another kind of file, not a
    truncated checkpoint (a text file's message ended in torch's ": 105" and blamed an interrupted download): torch.save
    writes a zip archive (b"PK\\x03\\x04"), and before PyTorch 1.6 wrote a pickle (b"\\x80") that begins with torch's
    magic number; a pickle that does not is pickle.dump's (`_plain_pickle`), and a whole zip archive with no data.pkl
    is not torch.save's, or with constants.pkl is TorchScript's (torch.jit.save). A text file is quoted (a Git LFS
    pointer, a saved error page). An empty file, and one that begins as either of torch's, are left to the caller."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return
    if not head:
        return
    if len(head) < 4 and b"PK\x03\x04".startswith(head):   # 1 to 3 bytes that begin as a zip archive: cut short, said by
        return                                                # the caller (not "text (beginning 'P')")
    if head.startswith(b"PK\x03\x04"):   # a zip archive: torch.save's holds data.pkl (TorchScript's too, and code)
        names = _zip_names(path)
        if names is None:                 # cut short (no central directory): said truncated by the caller
            return
        def has(name):
            return any(n == name or n.endswith("/" + name) for n in names)
        if has("constants.pkl"):          # torch.load refuses TorchScript with weights_only=True (its code would run)
            raise CheckpointError(f"{path} is a TorchScript archive (torch.jit.save), not a checkpoint of weights: save "
                                  f"the network's state_dict with torch.save, or pass {LOADABLE}")
        if not has("data.pkl"):
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise CheckpointError(f"{path} is a zip archive but not torch.save's (it holds no data.pkl; it holds "
                                  f"{shown or 'nothing'}): pass {LOADABLE}")
        return
    if head.startswith(b"\x80"):          # a pickle (protocol 2 or later): torch's own before 1.6, or pickle.dump's
        if not _plain_pickle(head):
            whole = _legacy_whole(path)
            if whole is False:             # its pickles are whole, so it is torch's, and its tensors' bytes stop short
                raise CheckpointError(f"{path} ({_bytes(path.stat().st_size)}) is not a readable torch checkpoint; it is "
                                      f"truncated: a torch file in the format before PyTorch 1.6 whose tensors' data stops "
                                      f"short (an interrupted download or copy?)")
            if head[1:2] >= b"\x04" and whole:    # torch.save(..., pickle_protocol=4): FRAME, opcode 149
                raise CheckpointError(f"{path} is a torch checkpoint in the format before PyTorch 1.6 pickled with protocol "
                                      f"{head[1]}, which torch's weights-only loader cannot read (it reads 2 and 3), and "
                                      f"ddimlab loads no file by running its code: save the weights again where they "
                                      f"were made, with torch.save's default format; or pass {LOADABLE}")
            return
        raise CheckpointError(f"{path} is a Python pickle (pickle.dump), not a torch checkpoint (torch.save writes a zip "
                              f"archive; before PyTorch 1.6, a pickle that begins with torch's magic number): save the "
                              f"weights with torch.save, or pass {LOADABLE}")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:        # a character cut at byte 64 is still text
        text = head[:e.start].decode("utf-8") if e.start >= len(head) - 3 else None
    if text and text.strip() and all(c.isprintable() or c in "\t\r\n" for c in text):
        what = f" but text (beginning {text.strip().splitlines()[0][:50]!r})"
    else:
        what = f" (it begins {head[:8]!r})"
    raise CheckpointError(f"{path} is not a torch checkpoint{what}: torch.save writes a zip archive (before PyTorch "
                          f"1.6, a pickle); pass {LOADABLE}")


def _zip_names(path) -> list[str] | None:
    """The names of the files in the zip archive at `path`, or None where its directory cannot be read (cut short)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None


def _plain_pickle(head: bytes) -> bool:
    """Whether a file whose first bytes, `head`, begin as a pickle is a plain one (pickle.dump): its first value is not
    torch's magic number, which torch.save's format before PyTorch 1.6 pickles first (`torch.serialization.MAGIC_NUMBER`).
    Not said of a file cut before its first value ends. Such a pickle is refused, not loaded: torch's weights-only reader
    takes none (the magic number is missing), and its tensors, if any, are rebuilt by running code (torch.load of bytes)."""
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(head)):
            if op.name not in ("PROTO", "FRAME"):
                return arg != torch.serialization.MAGIC_NUMBER
    except ValueError:                     # cut short within head (or no pickle after all): left to the caller
        pass
    return False


class _Inert:
    """What `_Unrun` makes of every global a pickle names: takes any arguments and state, and runs nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _Unrun(pickle.Unpickler):
    """Reads a pickle without importing or calling anything it names: each global is an `_Inert` class that keeps its
    name (`pickled`), and of the persistent ids, torch's storages are kept, {key: the storage type's name}."""

    def __init__(self, f):
        super().__init__(f)
        self.storages = {}

    def find_class(self, module, name):
        return type(name, (_Inert,), {"pickled": name})

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":    # ("storage", type, key, location, numel)
            self.storages[pid[2]] = getattr(pid[1], "pickled", None)
        return None


def _legacy_whole(path) -> bool | None:
    """Whether a torch file in the format before PyTorch 1.6 is whole: its five pickles (magic number, protocol version,
    system info, the object, its storage keys), then for each key the storage's element count (8 bytes) and that many
    elements of the dtype its type in the object's pickle names (torch.serialization's `_legacy_save`). Read with
    `_Unrun`, nothing run. False where the pickles are whole and the storages' bytes stop short (truncated); None where
    the pickles cannot be read (cut inside them, or not torch's) or a storage's type is not torch's: the caller says."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            for _ in range(2):
                list(pickletools.genops(f))                 # the magic number and the protocol version
            info = _Unrun(f).load()
            objects = _Unrun(f)
            objects.load()
            keys = _Unrun(f).load()
            order = "little" if not isinstance(info, dict) or info.get("little_endian", True) else "big"
            at = f.tell()
            for key in keys:
                item = torch._utils._element_size(torch.storage._get_dtype_from_pickle_storage_type(objects.storages[key]))
                f.seek(at)
                count = f.read(8)
                if len(count) < 8:
                    return False
                at += 8 + int.from_bytes(count, order) * item
                if at > size:
                    return False
            return True
    except Exception:                      # cut or garbled inside a pickle, an unknown storage type: not known here
        return None


def _bytes(n: int) -> str:
    """A file's size in words: "1 byte", "2718984 bytes"."""
    return f"{n} byte{'' if n == 1 else 's'}"


def _cut_name(dotted: str) -> bool:
    """Whether a global that a pickle names is a name cut short: its module is loaded and has no such attribute (an
    old-format torch file cut inside `torch._utils._rebuild_tensor_v2`), so the file is truncated, not asking to run
    code. A module not loaded is not imported to find out (importing runs its code): such a name is taken as given."""
    module, _, attr = dotted.rpartition(".")
    if not all(part.isidentifier() for part in dotted.split(".")):      # "t." or ".": cut inside the module's name
        return True
    return module in sys.modules and not hasattr(sys.modules[module], attr)


def _torch_load(path, map_location, mmap=False):
    path = Path(path)
    if not path.is_file():
        if path.exists() and not path.is_dir():         # else "no checkpoint file at /dev/null", which is there
            require_files([path], hint=f"pass {LOADABLE}")
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        # mmap needs torch's zip format: any other file is read whole (an old-format torch file loads, the rest fail)
        mmap = mmap and zipfile.is_zipfile(path) and _utf8_name(path)
        with warnings.catch_warnings():    # a pickle of protocol 3 to 5, a TorchScript archive: loaded, or said below
            warnings.filterwarnings("ignore", r"Detected pickle protocol|'torch\.load' received a zip file that looks "
                                              r"like a TorchScript archive", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        _refuse_other_formats(path)        # first: a plain pickle's tensor names torch's _load_from_bytes too
        what = re.search(r"(?:unsupported global|global)[:\s]+(?:GLOBAL\s+)?([\w.]+)", str(e), re.I)
        if what and not _cut_name(what.group(1)):  # a sound file that names Python callables: loading would run code
            raise CheckpointError(f"refused: {path} asks to run code when loaded (it names {what.group(1)}); "
                                  f"ddimlab loads only tensors and plain containers") from None
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated, corrupted, or not a "
                              f"torch file)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, struct.error) as e:
        if isinstance(e, OSError) and e.errno is not None:     # the OS's (Permission denied, an I/O error), not the file's
            raise                                               # contents: not "probably truncated"
        _refuse_other_formats(path)
        size, said = path.stat().st_size, (str(e).strip().splitlines() or [""])[0].split(". ")[0][:120]   # torch's first words
        raise CheckpointError(f"{path} ({_bytes(size)}) is not a readable torch checkpoint; it is probably truncated or "
                              f"corrupted (an interrupted download or copy?)" + (f": {said}" if said else "")) from e


# ---------------------------------------------------------------------------------------------
# the official DDPM CIFAR-10 checkpoint


def official_state_dict(obj) -> dict:
    """The model state_dict inside an official-layout checkpoint object.

    Accepts a plain state_dict (the converted `model-790000.ckpt`), one saved from
    `nn.DataParallel` / `torch.compile` ('module.' / '_orig_mod.' prefixes), and ermongroup/ddim's
    training files `[model, optimizer, epoch, step(, ema)]`, of which the EMA weights are taken.
    """
    if isinstance(obj, (list, tuple)):
        dicts = [o for o in obj if isinstance(o, dict) and o and all(torch.is_tensor(v) for v in o.values())]
        if not dicts:
            raise CheckpointError(f"the file holds a {type(obj).__name__} without a state_dict (a dict of tensors); "
                                  f"expected a ddimlab ckpt.pt, the official model-790000.ckpt or ermongroup/ddim's "
                                  f"[model, optimizer, epoch, step(, ema)]")
        obj = dicts[-1] if len(obj) >= 5 else dicts[0]  # [..., ema] when EMA was saved
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a state_dict, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_state_strict(model: torch.nn.Module, state: dict, source="state_dict") -> torch.nn.Module:
    """`model.load_state_dict(state, strict=True)` with an error that lists what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source} does not match the network: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}, {len(shapes)} shape mismatch(es) {shapes[:3]}")
    model.load_state_dict(state, strict=True)
    return model


def official_ddpm_file(cache_dir=None, url: str = DDPM_CIFAR10_URL, md5: str = DDPM_CIFAR10_MD5,
                       progress: bool = True) -> Path:
    """`<cache>/checkpoints/model-790000.ckpt`, downloaded (about 143 MB) the first time.

    The download is md5-checked and renamed into place only when complete (`data.download`), so an
    interrupted or corrupted transfer never leaves a file the next call would trust.
    """
    return download(url, cache_folder(cache_dir) / "checkpoints" / DDPM_CIFAR10_FILE, md5, progress=progress)


def load_official_ddpm(path, verify_md5: bool = False, expected_md5: str = DDPM_CIFAR10_MD5,
                       map_location="cpu") -> unet_mod.UNet:
    """The DDPM CIFAR-10 EMA model (`model-790000.ckpt`) as `unet.cifar10_unet()` in eval mode.

    With verify_md5=True the file's md5 must equal `expected_md5` (the official file's by default).
    """
    verify_md5 = check_bool("verify_md5", verify_md5)
    if verify_md5:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no checkpoint file at {path}")
        got = md5sum(path)
        if got != expected_md5.lower():
            raise CheckpointError(f"md5 of {path} is {got}, expected {expected_md5}: this is not the official "
                                  f"{DDPM_CIFAR10_FILE} or it is damaged (pass verify_md5=False to load it anyway)")
    state = official_state_dict(_torch_load(path, map_location))
    net = unet_mod.cifar10_unet()
    load_state_strict(net, state, source=str(path))
    return net.eval()


# ---------------------------------------------------------------------------------------------
# diffusers' UNet2DModel

_RES_LEAF = {"temb_proj": "time_emb_proj", "nin_shortcut": "conv_shortcut"}
_ATTN_LEAF = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # diffusers < 0.14
_TOP = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2",
        "conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}


def _num_levels(keys, pattern) -> int:
    levels = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    if not levels:
        raise ValueError("state_dict has no down-sampling levels; is it a UNet state_dict?")
    return max(levels) + 1


def _leaf(rest: str, table: dict) -> str:
    name, _, param = rest.rpartition(".")
    return f"{table.get(name, name)}.{param}"


def to_diffusers(unet_state: dict) -> dict:
    """ddimlab / official DDPM state_dict -> diffusers `UNet2DModel` state_dict (same tensors).

    Up-levels are numbered from the bottom in diffusers (up_blocks.0 is the coarsest) and from the
    top in the official layout (up.0 is full resolution); attention's 1×1 convs become linears.
    """
    unet_state = official_state_dict(unet_state)  # drops 'module.' / '_orig_mod.' prefixes
    L = _num_levels(unet_state, r"down\.(\d+)\.")
    out = {}
    for key, v in unet_state.items():
        if m := re.fullmatch(r"(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(.+)", key):
            side, i, kind, j, rest = m.groups()
            i = int(i) if side == "down" else L - 1 - int(i)
            if kind == "block":
                new = f"{side}_blocks.{i}.resnets.{j}.{_leaf(rest, _RES_LEAF)}"
            else:
                new = f"{side}_blocks.{i}.attentions.{j}.{_leaf(rest, _ATTN_LEAF)}"
        elif m := re.fullmatch(r"down\.(\d+)\.downsample\.conv\.(weight|bias)", key):
            new = f"down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
        elif m := re.fullmatch(r"up\.(\d+)\.upsample\.conv\.(weight|bias)", key):
            new = f"up_blocks.{L - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
        elif m := re.fullmatch(r"mid\.block_([12])\.(.+)", key):
            new = f"mid_block.resnets.{int(m.group(1)) - 1}.{_leaf(m.group(2), _RES_LEAF)}"
        elif m := re.fullmatch(r"mid\.attn_1\.(.+)", key):
            new = f"mid_block.attentions.0.{_leaf(m.group(1), _ATTN_LEAF)}"
        elif key.rpartition(".")[0] in _TOP:
            name, _, param = key.rpartition(".")
            new = f"{_TOP[name]}.{param}"
        else:
            raise ValueError(f"unknown key {key!r} in a ddimlab UNet state_dict")
        if ".attentions." in new and v.ndim == 4:
            v = v.flatten(1)  # 1×1 conv (C, C, 1, 1) -> linear (C, C)
        out[new] = v
    return out


def _mid_or_top(key: str) -> str:
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", key):
        return f"mid.block_{int(m.group(1)) + 1}.{_leaf(m.group(2), _inverse(_RES_LEAF))}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"mid.attn_1.{_attn_leaf_back(m.group(1))}"
    inv = _inverse(_TOP)
    name, _, param = key.rpartition(".")
    if name not in inv:
        raise ValueError(f"unknown key {key!r} in a diffusers UNet2DModel state_dict")
    return f"{inv[name]}.{param}"


def _inverse(table: dict) -> dict:
    return {v: k for k, v in table.items()}


def _attn_leaf_back(rest: str) -> str:
    for old, new in _LEGACY_ATTN.items():
        if rest.startswith(old + "."):
            rest = new + rest[len(old):]
    name, _, param = rest.rpartition(".")
    inv = _inverse(_ATTN_LEAF)
    if name not in inv:
        raise ValueError(f"unknown attention parameter {rest!r} in a diffusers UNet2DModel state_dict")
    return f"{inv[name]}.{param}"


# Deliberate mirror of `to_diffusers` (each rule read backwards); tests/test_checkpoint.py round-trips both.
def from_diffusers(diffusers_state: dict) -> dict:
    """diffusers `UNet2DModel` state_dict (current or pre-0.14 attention names) -> ddimlab layout."""
    L = _num_levels(diffusers_state, r"down_blocks\.(\d+)\.")
    out = {}
    for key, v in diffusers_state.items():
        if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            side, i, kind, j, rest = m.groups()
            i = int(i) if side == "down" else L - 1 - int(i)
            if kind == "resnets":
                new = f"{side}.{i}.block.{j}.{_leaf(rest, _inverse(_RES_LEAF))}"
            else:
                new = f"{side}.{i}.attn.{j}.{_attn_leaf_back(rest)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
            new = f"down.{m.group(1)}.downsample.conv.{m.group(2)}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
            new = f"up.{L - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
        else:
            new = _mid_or_top(key)
        if (".attn." in new or new.startswith("mid.attn_1.")) and new.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # linear (C, C) -> 1×1 conv
        out[new] = v
    return out


# The settings of google/ddpm-cifar10-32 that make UNet2DModel compute DDPM's network.
_DDPM_SETTINGS = dict(time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1, act_fn="silu",
                      downsample_padding=0, center_input_sample=False, mid_block_scale_factor=1, norm_eps=1e-6,
                      resnet_time_scale_shift="default", add_attention=True, downsample_type="conv",
                      upsample_type="conv", class_embed_type=None)
# UNet2DModel's defaults for keys a config.json may omit.
_DIFFUSERS_DEFAULTS = dict(time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
                           downsample_padding=1, center_input_sample=False, mid_block_scale_factor=1, norm_eps=1e-5,
                           resnet_time_scale_shift="default", add_attention=True, downsample_type="conv",
                           upsample_type="conv", class_embed_type=None, attention_head_dim=8, norm_num_groups=32,
                           attn_norm_num_groups=None, time_embedding_dim=None, dropout=0.0,
                           mid_block_type="UNetMidBlock2D", in_channels=3, out_channels=3, layers_per_block=2)


def diffusers_config(config: dict) -> dict:
    """`UNet2DModel(**diffusers_config(net.config))` computes the same function as ddimlab's `net`."""
    known = {**unet_mod.PRESETS["cifar10"], "out_ch": None}
    if unknown := sorted(set(config) - set(known)):    # e.g. diffusers' own in_channels: dropped, the CIFAR-10 value kept
        raise ValueError(f"{unknown} are not ddimlab UNet settings (net.config); it takes {sorted(known)}")
    cfg = {**known, **config}
    ch, ch_mult, res = cfg["ch"], tuple(cfg["ch_mult"]), cfg["resolution"]
    if ch_mult[0] != 1:
        raise ValueError(f"diffusers' UNet2DModel needs ch_mult[0] == 1 (conv_in outputs block_out_channels[0]); "
                         f"got ch_mult={ch_mult}")
    attn = [res // 2 ** i in cfg["attn_resolutions"] for i in range(len(ch_mult))]
    return dict(sample_size=res, in_channels=cfg["in_ch"], out_channels=cfg["out_ch"] or cfg["in_ch"],
                block_out_channels=tuple(ch * m for m in ch_mult), layers_per_block=cfg["num_res_blocks"],
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                attention_head_dim=None, norm_num_groups=cfg["num_groups"], dropout=cfg["dropout"],
                mid_block_type="UNetMidBlock2D", **_DDPM_SETTINGS)


def unet_config_from_diffusers(config: dict) -> dict:
    """ddimlab `UNet` keyword arguments for a diffusers UNet2DModel config (a parsed config.json).

    Raises ValueError for settings under which UNet2DModel computes a different function
    (e.g. flip_sin_to_cos=True, multi-head attention, cross-attention blocks).
    """
    cfg = {**_DIFFUSERS_DEFAULTS, **config}
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"expected a UNet2DModel config, got _class_name={cfg['_class_name']!r}")
    wrong = {k: cfg[k] for k, v in _DDPM_SETTINGS.items() if cfg[k] != v}
    if cfg["mid_block_type"] != "UNetMidBlock2D":
        wrong["mid_block_type"] = cfg["mid_block_type"]
    if wrong:
        raise ValueError(f"unsupported UNet2DModel settings {wrong}; ddimlab's DDPM UNet needs {_DDPM_SETTINGS}")
    widths = list(cfg["block_out_channels"])
    ch = widths[0]
    if any(w % ch for w in widths):
        raise ValueError(f"block_out_channels {widths} must be multiples of the first, {ch}")
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    allowed_down, allowed_up = {"DownBlock2D", "AttnDownBlock2D"}, {"UpBlock2D", "AttnUpBlock2D"}
    if set(down) - allowed_down or set(up) - allowed_up:
        raise ValueError(f"block types must be in {sorted(allowed_down)} / {sorted(allowed_up)}, got {down} / {up}")
    attn = [b == "AttnDownBlock2D" for b in down]
    if [b == "AttnUpBlock2D" for b in reversed(up)] != attn:
        raise ValueError(f"up_block_types {up} must mirror down_block_types {down}")
    head = cfg["attention_head_dim"]
    attended = [w for w, a in zip(widths, attn) if a] + [widths[-1]]
    if head is not None and any(head != w for w in attended):
        raise ValueError(f"attention_head_dim={head} means multi-head attention; DDPM uses one head "
                         f"(attention_head_dim=None or equal to the width, {attended})")
    if cfg["attn_norm_num_groups"] not in (None, cfg["norm_num_groups"]):
        raise ValueError(f"attn_norm_num_groups={cfg['attn_norm_num_groups']} must be None or norm_num_groups")
    if cfg["time_embedding_dim"] not in (None, 4 * ch):
        raise ValueError(f"time_embedding_dim={cfg['time_embedding_dim']} must be None or 4 * {ch}")
    size = cfg.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"only square sample_size is supported, got {size}")
        size = size[0]
    if size is None:
        raise ValueError("config has no sample_size (needed to place attention)")
    return dict(in_ch=cfg["in_channels"], ch=ch, ch_mult=tuple(w // ch for w in widths),
                num_res_blocks=cfg["layers_per_block"],
                attn_resolutions=tuple(size // 2 ** i for i, a in enumerate(attn) if a),
                dropout=cfg["dropout"], resolution=size, out_ch=cfg["out_channels"],
                num_groups=cfg["norm_num_groups"])


def _diffusers_dir(path) -> Path:
    path = Path(path)
    if (path / "unet" / "config.json").is_file():  # a whole pipeline folder
        path = path / "unet"
    elif (path / "model_index.json").is_file() and not (path / "config.json").is_file():
        missing = "unet/config.json" if (path / "unet").is_dir() else "the folder unet/"
        raise FileNotFoundError(f"{path} is a diffusers pipeline folder (model_index.json) without its UNet: {missing} is "
                                f"missing (an unfinished download or copy?); fetch the whole pipeline, or pass {LOADABLE}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is a folder with neither ckpt.pt (a ddimlab run) nor config.json (a diffusers "
                                f"UNet2DModel: config.json + diffusion_pytorch_model.safetensors or .bin); pass {LOADABLE}")
    return path


def load_diffusers_folder(path, backend: str = "ddimlab", map_location="cpu"):
    """A diffusers UNet2DModel folder (e.g. a local copy of google/ddpm-cifar10-32) as a network.

    backend="ddimlab" (default) converts the weights into ddimlab's `UNet` (no diffusers needed);
    backend="diffusers" returns `diffusers.UNet2DModel.from_pretrained(path)` (wrap it with
    `eps_fn` for the samplers, like any network). Both are returned in eval mode.
    """
    if backend not in ("ddimlab", "diffusers"):
        raise ValueError(f"backend must be 'ddimlab' or 'diffusers', got {backend!r}")
    folder = _diffusers_dir(path)
    if backend == "diffusers":
        try:
            from diffusers import UNet2DModel
        except ImportError as e:
            raise ImportError("backend='diffusers' needs diffusers: pip install diffusers "
                              "(or use backend='ddimlab')") from e
        return UNet2DModel.from_pretrained(folder).eval()
    st, binary = folder / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model.bin"
    if not (st.is_file() or binary.is_file()):         # said before its config.json is read as a diffusers one
        raise FileNotFoundError(f"{folder} holds config.json but no ckpt.pt and neither diffusion_pytorch_model.safetensors "
                                f"nor .bin: pass a ddimlab run folder or ckpt.pt, or a diffusers UNet2DModel folder")
    config = _json_object(folder / "config.json")
    try:
        net = unet_mod.UNet(**unet_config_from_diffusers(config))
    except (KeyError, TypeError) as e:                      # a key missing, or a value of the wrong type
        raise CheckpointError(f"{folder / 'config.json'}: not a UNet2DModel config ddimlab can build "
                              f"({type(e).__name__}: {e})") from None
    if st.is_file():
        from safetensors.torch import load_file  # a declared dependency, imported only for this format
        try:
            state = load_file(st, device=str(map_location))
        except Exception as e:  # safetensors raises its own error type for damaged files
            raise CheckpointError(f"{st} is not a readable safetensors file (truncated?): {e}") from e
    else:
        state = _torch_load(binary, map_location)
    load_state_strict(net, from_diffusers(state), source=str(folder))
    return net.eval()


def save_diffusers_folder(net: unet_mod.UNet, path, alpha_bar) -> Path:
    """Write `net` as a diffusers UNet2DModel folder (config.json + diffusion_pytorch_model.*) with the noise schedule
    it was trained on, `alpha_bar`, as a DDIMScheduler's `trained_betas` in scheduler/scheduler_config.json (where
    `load_model` reads it, and diffusers' `DDIMScheduler.from_pretrained(path, subfolder="scheduler")`): the weights
    alone do not say it, and a reader would take DDPM's linear schedule. A folder holding a ddimlab run, a diffusers
    pipeline (model_index.json or unet/: its scheduler would be replaced and its own UNet still loaded), or a
    config.json that is not a UNet2DModel's, or a scheduler config this did not write, is refused; an earlier
    UNet2DModel export in it is replaced, its three files as one set (a write that fails leaves the earlier ones whole)."""
    if not isinstance(net, unet_mod.UNet):           # else "'tuple' object has no attribute 'config'"
        raise TypeError(f"net must be a ddimlab unet.UNet, got {type(net).__name__}" + (
            " (load_model returns (net, alpha_bar): pass them as two arguments)" if isinstance(net, tuple) else ""))
    path = Path(path)
    alpha_bar = schedule.validate_alpha_bar(alpha_bar)
    betas = 1 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    scheduler = {"_class_name": "DDIMScheduler", "num_train_timesteps": len(betas), "trained_betas": betas.tolist(),
                 "prediction_type": "epsilon", "clip_sample": False}
    if (path / "ckpt.pt").exists() or (path / "log.jsonl").exists():
        raise FileExistsError(f"{path} holds a ddimlab training run, whose config.json this would replace; choose another folder")
    if (path / "model_index.json").exists() or (path / "unet" / "config.json").exists():
        raise FileExistsError(f"{path} holds a diffusers pipeline, whose scheduler this would replace while loading keeps "
                              f"its unet/; choose another folder")
    if (path / "config.json").exists() and _json_dict(path / "config.json").get("_class_name") != "UNet2DModel":
        raise FileExistsError(f"{path / 'config.json'} is not a diffusers UNet2DModel's, and this would replace it; choose "
                              f"another folder")
    sched = path / "scheduler" / "scheduler_config.json"
    earlier = _json_dict(sched) if sched.exists() else None
    if earlier is not None and (earlier.get("_class_name") != "DDIMScheduler" or "trained_betas" not in earlier):
        raise FileExistsError(f"{sched} is not one this writes (a DDIMScheduler with trained_betas), and this would "
                              f"replace it; choose another folder")
    config = {"_class_name": "UNet2DModel", **diffusers_config(net.config)}        # before the folder: may refuse the net
    state = {k: v.detach().contiguous().cpu() for k, v in to_diffusers(net.state_dict()).items()}
    from safetensors.torch import save as st_save

    files = {path / "config.json": json.dumps(config, indent=2).encode(),
             path / "diffusion_pytorch_model.safetensors": st_save(state),
             path / "scheduler" / "scheduler_config.json": json.dumps(scheduler, indent=2).encode()}
    # as one set: a full disk at the weights left the new config.json beside an earlier export's weights and scheduler
    with folder_removed_on_error(path), replaced_together(path, list(files)):
        for file, data in files.items():
            atomic_write(file, lambda f: f.write(data), fsync=True)
    return path


def official_layout() -> dict[str, tuple[int, ...]]:
    """The official DDPM CIFAR-10 checkpoint's state_dict: key → shape, in file order (notebook 06 §1).

    Read from the listing shipped inside the package (`ddimlab/reference/ddpm_cifar10_unet_state_dict.tsv`,
    328 lines "key<TAB>shape"), so it works from an installed package as well as from a clone. Where the listing
    comes from, checked outside the repository: it equals, key for key, shape for shape and in order, the state_dict
    of the DDIM authors' PyTorch port (ermongroup/ddim, `models/diffusion.py` `Model` with `configs/cifar10.yml`),
    which loads the official weights; it is not written from ddimlab's own UNet.
    """
    text = resources.files("ddimlab").joinpath("reference", "ddpm_cifar10_unet_state_dict.tsv").read_text()
    out = {}
    for line in text.splitlines():
        key, shape = line.split("\t")
        out[key] = tuple(int(n) for n in shape.split("x"))
    return out


# ---------------------------------------------------------------------------------------------
# the one way to load any checkpoint, and the one model adapter


def diffusers_alpha_bar(folder) -> torch.Tensor:
    """ᾱ from a diffusers pipeline's scheduler_config.json next to the UNet (its `trained_betas` if it lists them, else
    its beta_schedule), else DDPM's linear schedule. A scheduler for another parametrisation than ε-prediction
    (`prediction_type` v_prediction or sample) is a CheckpointError: read as ε, it would sample silently wrong images."""
    folder = Path(folder)
    for cfg in (folder / "scheduler" / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
        if cfg.is_file():
            c = _json_object(cfg)
            if (c.get("prediction_type") or "epsilon") != "epsilon" or c.get("rescale_betas_zero_snr"):
                what = "rescale_betas_zero_snr" if c.get("rescale_betas_zero_snr") else \
                    f"prediction_type {c.get('prediction_type')!r}"
                raise CheckpointError(f"{cfg}: {what} is not supported; ddimlab samples ε-prediction networks on "
                                      f"schedules that end above alpha_bar = 0")
            try:
                if c.get("trained_betas") is not None:
                    betas = torch.as_tensor(c["trained_betas"], dtype=torch.float64)
                    if c.get("num_train_timesteps", len(betas)) != len(betas):    # which one diffusers' scheduler reads
                        raise ValueError(f"trained_betas lists {len(betas)} betas and num_train_timesteps says "
                                         f"{c['num_train_timesteps']}; make them agree")
                    return schedule.alpha_bar(betas)
                T = check_int("num_train_timesteps", c.get("num_train_timesteps", 1000))
                name = {"linear": "linear", "squaredcos_cap_v2": "cosine", "scaled_linear": "quadratic"}.get(
                    c.get("beta_schedule", "linear"))
                if name is None:
                    raise ValueError(f"beta_schedule {c.get('beta_schedule')!r} is not supported; "
                                     f"supported: linear, scaled_linear, squaredcos_cap_v2")
                if name == "cosine":
                    return schedule.make_alpha_bar("cosine", T)
                ends = [as_real(c.get(k, d)) for k, d in (("beta_start", 1e-4), ("beta_end", 0.02))]
                if None in ends:
                    raise ValueError("beta_start and beta_end must be numbers")
                if ends[0] > ends[1]:      # schedule.beta_schedule's rule, with what a config file can do about it
                    raise ValueError(f"beta_start = {ends[0]:g} exceeds beta_end = {ends[1]:g}: beta rises with t, from "
                                     f"beta_start at t = 0 to beta_end at t = T - 1 (DDPM §4: 1e-4 to 0.02); swap them, "
                                     f"or list a falling schedule as trained_betas")
                return schedule.alpha_bar(schedule.beta_schedule(name, T, *ends))
            except (ValueError, TypeError) as e:
                raise CheckpointError(f"{cfg}: {e}") from None
    return schedule.make_alpha_bar("linear", 1000)


def _json_object(path: Path) -> dict:
    """A JSON object file of a checkpoint folder; a damaged one is a CheckpointError naming it."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} must hold a JSON object {{...}}, got a {type(d).__name__}")
    return d


def load_model(path, device="cpu", use_ema: bool = True):
    """(network in eval mode on `device`, ᾱ float64 on `device`) from any checkpoint ddimlab reads:

    - a ddimlab training checkpoint `ckpt.pt`, or the run folder holding it (EMA weights unless
      use_ema=False; ᾱ from the run's schedule);
    - the official DDPM CIFAR-10 file `model-790000.ckpt` (any official-layout state_dict), or the name
      `ddpm-cifar10`, which downloads it once into the cache (`official_ddpm_file`); linear ᾱ, T = 1000;
    - a diffusers `UNet2DModel` folder or pipeline folder (ᾱ from its scheduler_config.json when present).
    """
    device = devices.resolve(device)              # "gpu" is a ValueError saying what is allowed, before the load
    use_ema = check_bool("use_ema", use_ema)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the checkpoint must be a path or the name `{OFFICIAL_NAME}`, got {type(path).__name__}")
    if not str(path).strip():                   # Path("") is the current folder
        raise CheckpointError(f"the checkpoint path is empty; pass {LOADABLE}")
    if str(path) == OFFICIAL_NAME and os.path.lexists(OFFICIAL_NAME):
        raise CheckpointError(f"`{OFFICIAL_NAME}` names the official DDPM model, and a file or folder of that name is "
                              f"here too; pass ./{OFFICIAL_NAME} for the local one, or run from another folder")
    path = official_ddpm_file() if str(path) == OFFICIAL_NAME else Path(path)
    if path.is_dir() and (path / "ckpt.pt").is_file():
        path = path / "ckpt.pt"                     # a ddimlab run folder
    elif path.is_dir() and (why := unresolved_link(path / "ckpt.pt")):
        raise CheckpointError(f"{path} holds no checkpoint: {why}; pass {LOADABLE}")
    elif path.is_dir() and (aside := sorted(path.glob(".previous-*/ckpt.pt"))):   # `train --overwrite`, stopped early
        raise CheckpointError(f"{path} holds no ckpt.pt: the previous run's checkpoint is in {aside[0]}, set aside by a "
                              f"`train --overwrite` that was stopped before its first checkpoint; pass that file, or move "
                              f"its files back into {path}")
    elif path.is_dir() and ((path / "log.jsonl").exists() or "ema_decay" in _json_dict(path / "config.json")):
        raise CheckpointError(f"{path} is a ddimlab run folder without ckpt.pt: the run has not written a checkpoint yet")
    elif path.is_dir() and ((path / "ckpt.pt").exists() or path.suffix.lower() in (".pt", ".pth", ".ckpt")):
        where = path / "ckpt.pt" if (path / "ckpt.pt").exists() else path
        raise CheckpointError(f"{where} is not a file but a {'folder' if where.is_dir() else 'special file'}; a "
                              f"checkpoint is a file (ckpt.pt, model-790000.ckpt) or a diffusers UNet2DModel folder")
    elif path.is_file() and path.suffix.lower() in (".npz", ".png", ".json", ".jsonl", ".txt", ".csv", ".md"):
        raise CheckpointError(f"{path} is a {path.suffix} file, not a checkpoint; pass {LOADABLE}")
    one_set = ("offers no raw weights to choose: --no-ema (use_ema=False) picks a ddimlab run's raw weights over its EMA "
               "ones; drop it")
    if path.is_dir():
        if not use_ema:
            raise ValueError(f"{path}, a diffusers folder, {one_set}")
        net, abar = load_diffusers_folder(path), diffusers_alpha_bar(path)
    else:
        state = load_checkpoint(path)
        if isinstance(state, dict) and "config" in state and "model" in state:
            net = unet_from_run(state, use_ema)
            net.dataset = state["config"].get("dataset")     # what the run trained on (`reproduce` checks it)
            net.run_config = state["config"]                 # its saved settings (`train.warn_unknown_settings`)
            net.run_step = state.get("step")                 # the step its weights are of
            abar = run_alpha_bar(state["config"], path)
        elif not use_ema:
            raise ValueError(f"{path}, an official-layout file (ddimlab loads its EMA weights where it has both), "
                             f"{one_set}")
        else:  # the official layout, already read: no second pass over the 143 MB file
            net, weights = unet_mod.cifar10_unet(), official_state_dict(state)
            if not weights.keys() & net.state_dict().keys():     # e.g. a digits classifier: not "328 missing keys"
                raise CheckpointError(f"{path} holds no diffusion model ddimlab reads (none of its {len(weights)} keys, "
                                      f"e.g. {list(weights)[:2]}, is a UNet weight); pass {LOADABLE}")
            net = load_state_strict(net, weights, source=str(path))
            abar = schedule.make_alpha_bar("linear", 1000)
    return carry_schedule(net, abar).to(device).eval(), abar.to(device)


def run_alpha_bar(config: dict, source) -> torch.Tensor:
    """ᾱ of a ddimlab run from its saved settings: `schedule.make_alpha_bar` of its schedule and T (linear and 1000 where
    a run older than them saved neither; notebook 06 §4). A schedule name this ddimlab does not know (a newer one's run,
    an edited file), or a T it cannot build, is a CheckpointError naming `source` and the names it knows: no other table
    stands in for the network's own, and a fallback (the linear one, as a warning) sampled finite, wrong images."""
    name, T = config.get("schedule", "linear"), config.get("T", 1000)
    if name not in schedule.SCHEDULES:
        raise CheckpointError(f"{source} was trained on the noise schedule {name!r}, which this ddimlab does not know (it "
                              f"knows {', '.join(schedule.SCHEDULES)}); load it with the ddimlab that trained it")
    try:
        return schedule.make_alpha_bar(name, int(T))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source} was trained on the {name} schedule with T = {T!r}, which this ddimlab cannot "
                              f"build ({e})") from None


def carry_schedule(net: torch.nn.Module, alpha_bar: torch.Tensor) -> torch.nn.Module:
    """`net` with the ᾱ it was trained on as `net.alpha_bar` (float64, on the CPU, whatever device net moves to), which
    `eps_fn(net)` carries to the samplers' `samplers.check_schedule`: the one way a network keeps its schedule
    (`load_model`, `train.load_trained`, `train.build_model`)."""
    net.alpha_bar = alpha_bar.detach().to("cpu", torch.float64).clone()
    return net


def _json_dict(path: Path) -> dict:
    """A JSON object file as a dict ({} if it is missing, unreadable or not a JSON object)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


class EarlyEMAWarning(UserWarning):
    """The EMA weights of a run still hold much of the initial random weights (`train.ema_initial_share`)."""


EARLY_EMA = 0.1     # above this share of initial weights, the EMA's samples are called out as mostly untrained


def unet_from_run(state: dict, use_ema: bool = True) -> unet_mod.UNet:
    """The UNet of a ddimlab training checkpoint (the dict `train` saves): built from the saved config's
    `unet.CONFIG_KEYS` and loaded strictly with the EMA weights (or the raw ones), in eval mode. An
    `EarlyEMAWarning` when the EMA weights still hold more than `EARLY_EMA` of the initial ones (notebook 06 §6)."""
    missing = [k for k in ("model", "config") if not isinstance(state.get(k), dict)]     # absent, or e.g. None
    cfg = state["config"] if isinstance(state.get("config"), dict) else {}
    missing += [f"config.{k}" for k in unet_mod.CONFIG_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(f"not a ddimlab training checkpoint: it lacks {missing}")
    kwargs = {k: tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k] for k in unet_mod.CONFIG_KEYS}
    net = unet_mod.UNet(in_ch=int(state.get("in_ch", 3)), **kwargs)
    if use_ema and not isinstance(state.get("ema"), dict):
        raise CheckpointError("this checkpoint holds no EMA weights ('ema'); --no-ema (use_ema=False) uses its raw weights")
    weights = "ema" if use_ema else "model"
    share = float(state.get("ema_initial_share", 0.0))
    if weights == "ema" and share > EARLY_EMA:
        warnings.warn(f"the EMA weights of this run (step {state.get('step')}) still hold {share:.0%} of the initial random "
                      "weights, so its samples will look untrained; --no-ema (use_ema=False) uses the raw weights",
                      EarlyEMAWarning, stacklevel=2)
    return load_state_strict(net, state[weights], source=f"the checkpoint's {weights!r} weights").eval()


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside `torch.compile`'s and (Distributed)DataParallel's wrappers: the same weights, under names with
    an '_orig_mod.' or 'module.' prefix."""
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule":        # torch.compile's (torch._dynamo is slow to import)
            model = model._orig_mod
        else:
            return model


def weights_sha256(model) -> str | None:
    """sha256 over a network's parameter and buffer names and values, also through `checkpoint.eps_fn`'s adapter
    (None for any other callable); a compiled or DataParallel network has its network's (`unwrapped`), so that a
    resume with it is not taken for another model."""
    if not isinstance(model, torch.nn.Module):
        model = getattr(model, "network", model)          # eps_fn's adapter (a Module's own `.network` is not unwrapped)
    if not isinstance(model, torch.nn.Module):
        return None
    return sha256_of(*(item for name, v in sorted(unwrapped(model).state_dict().items()) for item in (name, v)))


def sha256_of(*items) -> str:
    """sha256 over strings and tensors' bytes, in order; anything else is a TypeError."""
    h = hashlib.sha256()
    for v in items:
        if not isinstance(v, (str, torch.Tensor)):    # else "'object' object has no attribute 'detach'"
            raise TypeError(f"sha256_of hashes strings and torch tensors, got {type(v).__name__}")
        h.update(v.encode() if isinstance(v, str) else
                 v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def image_shape(model) -> tuple:
    """(C, H, W) of the images a network records it was made for (ddimlab's `config["in_ch"]` and `["resolution"]`,
    diffusers' `config.in_channels` and `.sample_size`; also behind an `eps_fn`), None where it records nothing."""
    net = model if isinstance(model, torch.nn.Module) else getattr(model, "network", None)
    cfg = getattr(unwrapped(net) if isinstance(net, torch.nn.Module) else net, "config", None) or {}
    if not hasattr(cfg, "get"):
        return None, None, None
    size = cfg.get("resolution", cfg.get("sample_size"))
    H, W = size if isinstance(size, (list, tuple)) and len(size) == 2 else (size, size)
    return cfg.get("in_ch", cfg.get("in_channels")), H, W


def in_channels(model) -> int | None:
    """The input channels a network records (`image_shape`), or None."""
    return image_shape(model)[0]


def eps_fn(model, amp: bool = False):
    """A network as the samplers' `eps(x, t)` (notebook 06 §5): the one adapter for every kind of model.

    Works for ddimlab's `UNet`, diffusers' `UNet2DModel` (its output's `.sample`) and any callable
    model(x, t). No gradients: the network runs under `torch.no_grad()`, so an x that requires grad (autograd on) is a
    ValueError, not an ε̂ whose ∂ε̂/∂x is silently missing from x's gradient (differentiating through a sampler); to
    differentiate through ε̂, pass the network as a plain function, `lambda x, t: net(x, t)` with `net.eval()`.
    `t` may be an int, a 0-d or a (B,) tensor (integer or float steps);
    with amp=True the call runs under bf16 autocast on CUDA; ε̂ comes back in x's dtype, which must be the network's
    (else a TypeError saying so). A network with modules in train mode is called in eval mode (no dropout: sampling is
    a function of x and t only), and each module's mode is put back after the call.
    """
    amp = check_bool("amp", amp)
    if not callable(model):                           # else "'str' object is not callable" at the first step
        raise TypeError(f"model must be a network (torch.nn.Module) or a function model(x, t), got "
                        f"{type(model).__name__}")
    is_net = isinstance(model, torch.nn.Module)
    in_ch = in_channels(model)
    weights_ok = False

    def eps(x, t):
        nonlocal weights_ok
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__} (torch.from_numpy(x) for an array)")
        if not x.is_floating_point():         # else "convert the network with .to(torch.uint8)", which no network can
            raise TypeError(f"x must be floating point (x_t, data in [-1, 1] plus noise), got {x.dtype}"
                            + ("; for 0..255 images: data.to_model_range(x)" if x.dtype == torch.uint8 else ""))
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError("x requires grad, but checkpoint.eps_fn computes no gradients (it calls the network under "
                             "torch.no_grad), so ∂ε/∂x would be missing from x's gradient: to differentiate through ε, pass "
                             "the network as a function, lambda x, t: net(x, t), with net.eval(); else pass x.detach()")
        check_values("x", x, "the network needs x's values")    # else "unsupported autocast device_type 'meta'"
        if is_net and not weights_ok:    # as a sampler does: else "Tensor on device meta is not on the expected device
            check_weights(eps, "eps_fn(model)")   # cpu!" from inside the network. Until one call passes: the scan over
            weights_ok = True                   # 328 tensors took 0.34 ms a call on the CIFAR-10 UNet (this CPU)
        if in_ch is not None and x.ndim == 4 and x.shape[1] != in_ch:      # else a conv error deep inside the network
            raise ValueError(f"x has {x.shape[1]} channels but the network takes {in_ch}: x is (B, {in_ch}, H, W)")
        t = schedule.as_steps(t)              # a string is a TypeError naming t, not torch's "invalid data type 'str'"
        if t.is_floating_point() and t.device.type == "cpu" and not bool(torch.isfinite(t).all()):
            raise ValueError(f"steps t must be finite, got {t.tolist()}")      # (a GPU t is not checked: no sync per call)
        t = t.to(x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if is_net and not (amp and x.is_cuda):
            w = next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype)
            if w != x.dtype:      # else torch's "Input type (double) and bias type (float) should be the same"
                raise TypeError(f"x is {x.dtype} but the network's weights are {w}: pass x.to({w}) or convert the "
                                f"network with .to({x.dtype})")
        training = [m for m in model.modules() if m.training] if is_net else []
        for m in training:
            m.training = False          # the flag itself: .train() would set every submodule's
        try:
            with torch.no_grad(), torch.autocast(x.device.type, torch.bfloat16, enabled=amp and x.is_cuda):
                out = model(x, t)
        finally:
            for m in training:
                m.training = True
        out = getattr(out, "sample", out)
        if not isinstance(out, torch.Tensor):    # else "'tuple' object has no attribute 'to'"
            raise TypeError(f"model(x, t) must return a tensor (or an output with .sample, as diffusers' UNet2DModel), got "
                            f"{type(out).__name__}" + (" (a diffusers model gives one with return_dict=False: keep its default, "
                                                       "True)" if isinstance(out, tuple) else ""))
        return out.to(x.dtype)
    eps.network, eps.amp = model, amp      # what generate_samples records of the weights and precision
    if isinstance(getattr(model, "alpha_bar", None), torch.Tensor):     # set by carry_schedule: the table it was trained on
        eps.alpha_bar = model.alpha_bar
    return eps
