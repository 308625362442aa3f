"""pretrained.digits_model: trains once, then loads the cache; deterministic; key; broken cache."""
import dataclasses
import shutil

import pytest
import torch

from ddimlab import pretrained, train

STEPS = 2  # two optimizer steps of the digits preset: enough to move every weight away from its init


def _equal(m1, m2):
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def first(cache):
    return pretrained.digits_model(steps=STEPS, cache_dir=cache)


threads_before = torch.get_num_threads()


def test_trains_then_loads_the_cache(cache, first, monkeypatch):
    model, config = first
    tmp_path = cache
    folders = [f for f in (tmp_path / "models").iterdir() if f.is_dir()]  # the lock file stays
    assert [f.name for f in folders] == [f"digits_{pretrained.config_key(config)}"]  # no temp folder left
    assert (folders[0] / "ckpt.pt").is_file() and config.out == str(folders[0])
    assert config.steps == STEPS and config.threads == pretrained.THREADS == 2 and not model.training
    assert torch.get_num_threads() == threads_before  # training used its own thread count and restored ours

    def no_training(*a, **k):
        raise AssertionError("digits_model trained although the cache holds the model")

    monkeypatch.setattr(pretrained.train, "train", no_training)
    again, config2 = pretrained.digits_model(steps=STEPS, cache_dir=tmp_path)
    assert _equal(model, again) and config2 == config


def test_same_seed_same_weights_and_training_changes_them(tmp_path, first):
    model, config = first
    other, _ = pretrained.digits_model(steps=STEPS, cache_dir=tmp_path / "elsewhere")
    assert _equal(model, other)  # trained twice from scratch on the CPU: bitwise equal
    torch.manual_seed(config.seed)
    init = train.build_model(config, in_ch=1)
    assert not _equal(model, init)


def test_cache_key():
    base = pretrained.digits_config(steps=10)
    key = pretrained.config_key(base)
    assert key == pretrained.config_key(pretrained.digits_config(steps=10))
    for other in (pretrained.digits_config(steps=11), pretrained.digits_config(steps=10, seed=1),
                  pretrained.digits_config(steps=10, overrides={"ch": 16})):
        assert pretrained.config_key(other) != key
    # output folder, logging and progress bar do not change the weights
    same = pretrained.digits_config(steps=10, overrides={"out": "x", "log_every": 3, "progress": False})
    assert pretrained.config_key(same) == key


def test_broken_cache_file_is_retrained(cache, tmp_path, first, monkeypatch):
    model, config = first
    shutil.copytree(cache / "models", tmp_path / "models")
    ckpt = tmp_path / "models" / f"digits_{pretrained.config_key(config)}" / "ckpt.pt"
    ckpt.write_bytes(b"not a checkpoint")
    calls = []
    real_train = train.train
    monkeypatch.setattr(pretrained.train, "train", lambda c, **k: calls.append(1) or real_train(c, **k))
    again, _ = pretrained.digits_model(steps=STEPS, cache_dir=tmp_path)
    assert calls == [1] and _equal(model, again)


def test_thread_count_is_part_of_the_key(tmp_path, first, monkeypatch):
    """The weights depend on the thread count (rounding inside the convolutions): another count trains anew."""
    model, config = first
    shutil.copytree(config.out, tmp_path / "models" / f"digits_{pretrained.config_key(config)}")
    calls = []
    monkeypatch.setattr(pretrained.train, "train", lambda c, **k: calls.append(c.threads) or (_ for _ in ()).throw(KeyError))
    pretrained.digits_model(steps=STEPS, cache_dir=tmp_path)  # the default thread count: the copied model
    with pytest.raises(KeyError):
        pretrained.digits_model(steps=STEPS, cache_dir=tmp_path, threads=1)
    assert calls == [1]


def test_cpu_kernels_are_part_of_the_key(tmp_path, first, monkeypatch):
    """AVX-512 and AVX2 kernels train different weights (README, "The notebooks"): other kernels train anew."""
    model, config = first
    shutil.copytree(config.out, tmp_path / "models" / f"digits_{pretrained.config_key(config)}")
    monkeypatch.setattr(pretrained.train, "train", lambda c, **k: (_ for _ in ()).throw(KeyError("trains anew")))
    pretrained.digits_model(steps=STEPS, cache_dir=tmp_path)  # this process's kernels: the copied model
    monkeypatch.setattr(pretrained.devices, "cpu_kernels", lambda: "OTHER")
    with pytest.raises(KeyError, match="trains anew"):
        pretrained.digits_model(steps=STEPS, cache_dir=tmp_path)


def test_two_processes_asking_at_once_train_once(tmp_path):
    """The notebooks under `pytest -n 2` may ask for the model together: the second waits for the first's."""
    import subprocess
    import sys

    code = ("import sys; from ddimlab import pretrained, train; real = train.train\n"
            "def counted(c, **k):\n    open(sys.argv[1], 'a').write('x'); return real(c, **k)\n"
            f"train.train = counted; pretrained.digits_model(steps={STEPS}, cache_dir=sys.argv[2])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "calls"), str(tmp_path / "cache")])
             for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert (tmp_path / "calls").read_text() == "x"


@pytest.mark.parametrize("steps", [0, -3, 2.5, "10", True])
def test_bad_steps(steps, tmp_path):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        pretrained.digits_model(steps=steps, cache_dir=tmp_path)


def test_a_cache_dir_through_a_file_says_cache_dir_not_out(tmp_path):
    """Careless round 27: the lock file's folder was made by files.locked, whose advice was "choose another --out"."""
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match=r"f is a file, not a folder\); pass another cache_dir$"):
        pretrained.digits_model(steps=STEPS, cache_dir=tmp_path / "f")


def test_ctrl_c_while_training_the_cached_model_says_nothing_was_kept(tmp_path, monkeypatch):
    """`train`'s Ctrl-C message named a temporary folder (deleted right after) and advised --resume, which the
    demo does not have."""
    def interrupted(config, **kw):
        raise KeyboardInterrupt(f"stopped at step 3 of 10; saved {config.out}/ckpt.pt: continue with --resume")
    monkeypatch.setattr(train, "train", interrupted)
    with pytest.raises(KeyboardInterrupt, match="nothing was kept") as e:
        pretrained.digits_model(steps=10, cache_dir=tmp_path)
    assert "--resume" not in str(e.value)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_cache_key_is_unchanged_by_fields_added_at_their_old_behaviour(monkeypatch):
    """TrainConfig.init ("torch", the old behaviour) was added after models were cached: the key of the same
    weights stays what it was (computed at e58c2d7, before the field), so no cache is orphaned and retrained."""
    monkeypatch.setattr(pretrained.devices, "cpu_kernels", lambda: "AVX2")
    config = train.make_config("digits", dict(threads=2, progress=False))
    assert pretrained.config_key(config) == "b8d3b8f409b7"
    assert pretrained.config_key(dataclasses.replace(config, init="ddpm")) != "b8d3b8f409b7"


def test_a_killed_training_leaves_no_temporary_folder_behind(tmp_path, first, monkeypatch):
    """Helper 96: `kill -9` while the cached model trained left `.digits_<key>-XXXX/` in the cache for good. Training
    happens only under the model's lock, so the next training of that model removes such folders (not other keys').
    (The training writes `first`'s checkpoint: the real one, and its weights, are test_broken_cache_file_is_retrained's.)"""
    _, config = first
    name = f"digits_{pretrained.config_key(config)}"
    killed, other = tmp_path / "models" / f".{name}-abc123", tmp_path / "models" / ".digits_0000000000ff-xyz"
    for folder in (killed, other):
        folder.mkdir(parents=True)
        (folder / "log.jsonl").write_text("{}\n")
    monkeypatch.setattr(pretrained.train, "train", lambda c, **k: shutil.copy(f"{config.out}/ckpt.pt", c.out))
    pretrained.digits_model(steps=STEPS, cache_dir=tmp_path)
    assert not killed.exists() and other.exists() and (tmp_path / "models" / name / "ckpt.pt").exists()


def test_round_34_python_dash_m_pretrained_says_errors_and_ctrl_c_in_one_line(tmp_path):
    """`python -m ddimlab.pretrained` (the first step of `make test`) printed a traceback for a blank DDIMLAB_CACHE (a
    ValueError; only an OSError was one line) and for Ctrl-C while it trained (then died of SIGINT): now one line each,
    exit 1 and 130, and the interrupted model leaves nothing in the cache but its lock file."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DDIMLAB_CACHE": " "}
    r = subprocess.run([sys.executable, "-m", "ddimlab.pretrained"], capture_output=True, text=True, env=env, timeout=120)
    assert (r.returncode, r.stderr) == (1, "python -m ddimlab.pretrained: error: DDIMLAB_CACHE=' ' is blank; point it at "
                                           "a folder, or unset it for ~/.cache/ddimlab\n"), r.stderr
    interrupted = ("import runpy, signal\n"
                   "from ddimlab import train\n"
                   "signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal\n"
                   "def ctrl_c(config, **kw):                                   # Ctrl-C as the training starts\n"
                   "    signal.raise_signal(signal.SIGINT)\n"
                   "train.train = ctrl_c\n"
                   "runpy.run_module('ddimlab.pretrained', run_name='__main__', alter_sys=True)\n")
    r = subprocess.run([sys.executable, "-c", interrupted], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "DDIMLAB_CACHE": str(tmp_path)})
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1] == ("python -m ddimlab.pretrained: interrupted: stopped training the cached digits "
                                         "model; nothing was kept, and the next run trains it from the start"), r.stderr
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_the_model_carries_its_training_schedule(first):
    """digits_model's network carried no schedule, so the samplers could not refuse another table than its training
    one; it now carries its config's (`checkpoint.carry_schedule`), which eps_fn passes on to `check_schedule`."""
    from ddimlab import checkpoint, samplers, schedule

    model, config = first
    own = schedule.make_alpha_bar(config.schedule, config.T)
    assert torch.equal(checkpoint.eps_fn(model).alpha_bar, own)
    with pytest.raises(ValueError, match="is not the schedule eps was made for"):
        samplers.check_schedule(checkpoint.eps_fn(model), schedule.make_alpha_bar("cosine", config.T))
