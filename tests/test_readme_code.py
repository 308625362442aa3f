"""The README's commands and code, read from README.md itself, so that an edit there that breaks one fails here: every
`ddimlab …` command parses with the real parser (the work itself is too long to run), every `make` target exists, the
Python block runs as written but for its batch and step counts, and the inline calls name the functions' parameters."""
from __future__ import annotations

import hashlib
import inspect
import re
import shlex
from functools import partial
from pathlib import Path

import pytest
import torch

from ddimlab import checkpoint, cli, ode, samplers, unet

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.S | re.M)


def _shell_commands() -> list[str]:
    """Each command of the README's bash blocks, `&&` and `;` split, `for V in a b; do … $V …; done` expanded."""
    commands = []
    for block in _blocks("bash"):
        block = re.sub(r"#[^\n]*", "", block)                  # comments (no command of the README quotes a #)
        for var, values, body in re.findall(r"for (\w+) in ([^;]*); do(.*?); done", block, re.S):
            commands += [body.replace(f"${var}", v).strip() for v in values.split()]
        block = re.sub(r"for \w+ in [^;]*; do.*?; done", "", block, flags=re.S)
        commands += [part.strip() for line in block.splitlines() for part in re.split(r"&&|;", line) if part.strip()]
    return commands


def _ddimlab_argv(command: str) -> list[str] | None:
    """The arguments after `ddimlab`, `python -m ddimlab` or `torchrun … -m ddimlab`; None for another program."""
    words = shlex.split(command)
    if words[0] == "ddimlab":
        return words[1:]
    if words[0] in ("python", "torchrun") and "-m" in words and words[words.index("-m") + 1] == "ddimlab":
        return words[words.index("-m") + 2:]
    return None


COMMANDS = [argv for argv in map(_ddimlab_argv, _shell_commands()) if argv is not None]
INLINE = [shlex.split(span) for span in re.findall(r"`(?:python -m )?ddimlab ([^`…]+)`", README)]


def test_the_readme_shows_the_commands_this_file_reads():
    """The extraction itself: the blocks' commands (the for loop's five S included) and the inline ones are all found."""
    assert len(COMMANDS) >= 9 + 3 + 5 + 1, COMMANDS
    assert ["sample", "--checkpoint", "ddpm-cifar10", "--seed", "0", "--n", "16", "--steps", "1000", "--out",
            "consistency_S1000.png"] in COMMANDS
    assert ["demo", "--train-steps", "2000"] in INLINE and ["lab"] in INLINE


@pytest.mark.parametrize("argv", COMMANDS + INLINE, ids=" ".join)
def test_every_ddimlab_command_of_the_readme_parses(argv, capsys):
    """Options that exist, values they allow, the required ones given: what argparse checks before any work."""
    try:
        args = cli.build_parser("ddimlab").parse_args(argv)
    except SystemExit:
        pytest.fail(f"`ddimlab {' '.join(argv)}` (README) does not parse: {capsys.readouterr().err.strip()}")
    assert args.func is getattr(cli, f"cmd_{args.command}")


def test_the_ipndm_command_makes_the_10_network_calls_its_comment_says():
    """"ddimlab sample --checkpoint runs/digits --sampler ipndm --steps 11 --out fast   # 10 network calls\""""
    line = next(line for block in _blocks("bash") for line in block.splitlines() if "--sampler ipndm" in line)
    steps = int(re.search(r"--steps (\d+)", line)[1])
    assert int(re.search(r"# (\d+) network calls", line)[1]) == ode.nfe("ipndm", steps) == 10


def test_every_make_target_of_the_readme_is_the_makefiles():
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([a-z][\w-]*)", README)) | {c.split()[1] for c in _shell_commands() if c.startswith("make ")}
    assert named and named <= targets, named - targets
    extras = re.findall(r'pip install -e "\.\[(\w+)\]"', README)
    assert extras and all(re.search(rf"^{e} = \[", (ROOT / "pyproject.toml").read_text(), re.M) for e in extras), extras


def _python_block() -> str:
    (block,) = [b for b in _blocks("python") if "checkpoint.load_model" in b]
    return block


def _shrunk(code: str, old: str, new: str) -> str:
    assert code.count(old) == 1, f"the README's Python block no longer holds {old!r} once"
    return code.replace(old, new)


def test_the_python_block_runs_as_written_on_a_stand_in_for_the_official_file(tmp_path, server, randomize, monkeypatch):
    """"net, alpha_bar = checkpoint.load_model("ddpm-cifar10") …": the name is downloaded (here from a loopback server,
    md5-checked as the real file is) into the cache, read as the official layout, wrapped by eps_fn and sampled. The
    stand-in is the paper's UNet made narrow (ch 8, two levels: milliseconds a call) with random weights; of the block
    only the batch (16 → 2) and the steps (50 → 2) are made smaller. Its samples equal DDIM eq. 12 at η = 0 written out
    here on the network that was served, with DDPM's linear β."""
    narrow = partial(unet.cifar10_unet, ch=8, ch_mult=(1, 2), num_res_blocks=1, num_groups=4)
    torch.manual_seed(0)
    served = randomize(narrow()).eval()
    torch.save(served.state_dict(), tmp_path / "served.ckpt")          # the official file is a plain state_dict
    body = (tmp_path / "served.ckpt").read_bytes()
    server.routes["/model-790000.ckpt"] = (body, "ok")
    monkeypatch.setattr(unet, "cifar10_unet", narrow)
    monkeypatch.setattr(checkpoint, "official_ddpm_file", partial(checkpoint.official_ddpm_file, tmp_path / "cache",
                        url=server.url("/model-790000.ckpt"), md5=hashlib.md5(body).hexdigest(), progress=False))
    given, ddim_sample = [], samplers.ddim_sample
    monkeypatch.setattr(samplers, "ddim_sample", lambda eps, x_T, *a, **kw: given.append(x_T) or ddim_sample(eps, x_T, *a, **kw))
    code = _shrunk(_shrunk(_python_block(), "torch.randn(16, 3, 32, 32)", "torch.randn(2, 3, 32, 32)"),
                   'schedule.timesteps(50, 1000, "quad")', 'schedule.timesteps(2, 1000, "quad")')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert server.requests == ["/model-790000.ckpt"] and (tmp_path / "cache/checkpoints/model-790000.ckpt").is_file()

    (x,) = given
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    with torch.no_grad():
        for t, s in ((800, 0), (0, -1)):                        # "quad" with S = 2 is 800, 0; then the step to ᾱ = 1
            a_t, a_s = abar[t], abar[s] if s >= 0 else torch.tensor(1.0, dtype=torch.float64)
            e = served(x.float(), torch.full((2,), t)).double()
            x0_hat = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
            x = a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * e
    assert scope["x0"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(scope["x0"].double(), x, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(scope["alpha_bar"], abar)


def _inline_calls() -> list[tuple[str, list[str], dict[str, str]]]:
    """(function, positional names, keyword=value) of each `samplers.f(…)` the README's prose shows."""
    calls = []
    for name, arguments in re.findall(r"`samplers\.(\w+)\(([^)`]*)\)`", README):
        words = [a.strip() for a in arguments.split(",")]
        calls.append((name, [w for w in words if "=" not in w], dict(w.split("=") for w in words if "=" in w)))
    return calls


def test_the_inline_sampler_calls_name_the_functions_parameters():
    """"`samplers.guided_eps(eps_null, eps_cond, w)` … `samplers.langevin(eps, x, alpha_bar, t, step, n_steps)` …
    `samplers.sdedit(eps, x_in, alpha_bar, seq, eta=1.0)`": the positional names are the first parameters, in order, a
    call that shows them gives every required one, and a keyword is a parameter (`ddpm_sample(variance="large")` shows
    only the keyword it is about)."""
    calls = _inline_calls()
    assert {name for name, positional, _ in calls if positional} >= {"guided_eps", "langevin", "sdedit"}, calls
    for name, positional, keywords in calls:
        parameters = inspect.signature(getattr(samplers, name)).parameters
        assert list(parameters)[:len(positional)] == positional, (name, list(parameters))
        assert keywords.keys() <= parameters.keys() - set(positional), (name, keywords)
        required = {p for p, v in parameters.items() if v.default is inspect.Parameter.empty}
        assert not positional or required <= set(positional) | keywords.keys(), (name, required)

