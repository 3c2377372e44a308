"""The ``backdoorlab`` command line: a thin shell over the library.

Every user error ends as one line on stderr and exit status 2; an unexpected failure as one line and
status 1 (``--debug`` shows the traceback). Progress bars go to stderr and only on a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backdoorlab.errors import BackdoorLabError

DEFAULT_HOME = "~/.backdoorlab"


def _home(args: argparse.Namespace) -> Path:
    return Path(os.path.expanduser(args.home or os.environ.get("BACKDOORLAB_HOME") or DEFAULT_HOME))


class _Bars:
    """Renders the runner's ``(stage, done, total)`` progress as one tqdm bar per stage."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            if not self.enabled:
                print(f"· {stage}", file=sys.stderr, flush=True)
                return
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"{stage:<22}", unit="step", leave=True, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _with_bars(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, progress=<progress bars>, **kwargs)``, closing the bars however it ends."""
    bars = _Bars()
    try:
        return fn(*args, progress=bars, **kwargs)
    finally:
        bars.close()


def _parse_override(text: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in text:
        raise BackdoorLabError(f"--set {text!r}: write it as field.path=value, e.g. train.epochs=5")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def _apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    for item in overrides:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise BackdoorLabError(f"--set {item!r}: {part} is not a group of fields")
        node[path[-1]] = value
    return raw


def _print_run_summary(result: Any) -> None:
    m = result.metrics
    rows = [("poisoned model" if "asr" in m["victim"] else "model", m["victim"])]
    if "clean" in m:
        rows.append(("clean reference", m["clean"]))
    print(f"run {result.record.id}  ({result.record.name})")
    print(f"  {'model':<17}{'clean acc':>10}{'ASR':>9}")
    for label, r in rows:
        asr = f"{r['asr']:.2%}" if "asr" in r else "—"
        print(f"  {label:<17}{r['clean_acc']:>10.2%}{asr:>9}")
    extra = {k: v for k, v in m["victim"].items() if k not in ("clean_acc", "asr") and isinstance(v, float)}
    if extra:  # an attack's own metrics, e.g. AdvTrojan's accuracy on PGD and AdvTrojan examples
        print("  " + ", ".join(f"{k} {v:.2%}" for k, v in extra.items()))
    if result.trained:
        print(f"  trained: {', '.join(result.trained)}; {result.record.seconds:.1f} s")
    else:
        print(f"  every model came from the cache; {result.record.seconds:.1f} s")
    if result.record.report:
        print(f"report: {result.record.report}")


# -- commands ------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from backdoorlab.experiments.config import parse_config, read_yaml
    from backdoorlab.experiments.runner import run_experiment

    config = parse_config(_apply_overrides(read_yaml(args.config), args.set or []))
    result = _with_bars(run_experiment, config, _home(args))
    _print_run_summary(result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from backdoorlab.experiments.reproduce import recipe_path

    args.config = str(recipe_path("badnets", "small"))
    return cmd_run(args)


def cmd_runs_list(args: argparse.Namespace) -> int:
    from backdoorlab.experiments.runner import Workspace
    from backdoorlab.experiments.tables import run_rows

    store = Workspace(_home(args)).store
    runs = store.list(args.limit)
    if args.where:
        keep = {r["id"] for r in run_rows(store, args.where)}
        runs = [r for r in runs if r.id in keep]
    if not runs:
        print(
            f"no runs yet in {_home(args)} (try `backdoorlab demo`)" if not args.where else "no run matches"
        )
        return 0
    print(f"{'id':<10}{'created':<21}{'name':<28}{'clean acc':>10}{'ASR':>9}")
    for r in runs:
        v = r.metrics.get("victim", {})
        asr = f"{v['asr']:.2%}" if "asr" in v else "—"
        print(
            f"{r.id:<10}{r.created_iso:<21}{r.name[:27]:<28}{v.get('clean_acc', float('nan')):>10.2%}{asr:>9}"
        )
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from backdoorlab.experiments.runner import Workspace

    r = Workspace(_home(args)).store.get(args.id)
    if args.json:
        print(json.dumps(r.__dict__, indent=2, default=str))
        return 0
    print(f"run {r.id}: {r.name}  ({r.created_iso}, {r.seconds:.1f} s)")
    for key in ("victim", "clean"):
        if key in r.metrics:
            v = r.metrics[key]
            asr = f", ASR {v['asr']:.2%}" if "asr" in v else ""
            print(f"  {key:<7} clean accuracy {v['clean_acc']:.2%}{asr}")
    print("  config:")
    import yaml

    print("    " + yaml.safe_dump(r.config, sort_keys=False).replace("\n", "\n    ").rstrip())
    for name, path in r.artifacts.items():
        print(f"  {name}: {path}")
    if r.report:
        print(f"  report: {r.report}")
    return 0


def cmd_runs_export(args: argparse.Namespace) -> int:
    from backdoorlab.experiments.runner import Workspace
    from backdoorlab.experiments.tables import export_runs

    out = Path(args.out) if args.out else _home(args) / "runs.parquet"
    path, n = export_runs(Workspace(_home(args)).store, out, args.where or [])
    print(f"{n} runs written to {path}")
    return 0


def cmd_runs_compare(args: argparse.Namespace) -> int:
    from backdoorlab.experiments.runner import Workspace
    from backdoorlab.experiments.tables import compare

    print(compare(Workspace(_home(args)).store, args.ids))
    return 0


class _SweepView:
    """The sweep's live progress: a bar on a terminal, a line per finished experiment otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.last: tuple[int, int] | None = None

    def __call__(self, s: Any) -> None:
        if self.tty:
            from tqdm.auto import tqdm

            if self.bar is None:
                self.bar = tqdm(total=s.total, desc="sweep", unit="exp", dynamic_ncols=True)
            self.bar.n = s.done + s.failed
            self.bar.set_postfix_str(s.line().split(" · ", 1)[1], refresh=True)
        elif (s.done, s.failed) != self.last:
            self.last = (s.done, s.failed)
            print(f"· {s.line()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_sweep(args: argparse.Namespace) -> int:
    from backdoorlab.experiments.runner import Workspace

    what, rest = args.what[0], args.what[1:]
    store = Workspace(_home(args)).store
    if what == "list":
        sweeps = store.sweeps()
        if not sweeps:
            print(f"no sweeps yet in {_home(args)}")
        for s in sweeps:
            counts = ", ".join(f"{n} {k}" for k, n in sorted(s.counts.items()))
            print(f"{s.id:<12}{s.name[:30]:<32}{s.total:>4} experiments  ({counts})")
        return 0
    if what in ("report", "status"):
        if len(rest) != 1:
            raise BackdoorLabError(f"usage: backdoorlab sweep {what} ID (see `backdoorlab sweep list`)")
        if what == "status":
            s = store.get_sweep(rest[0])
            print(f"sweep {s.id} ({s.name}): " + ", ".join(f"{n} {k}" for k, n in sorted(s.counts.items())))
            for it in store.sweep_items(s.id):
                if it.status == "failed":
                    print(f"  failed #{it.idx} after {it.attempts} attempts: {it.error}")
            return 0
        from backdoorlab.experiments.sweep_report import write_sweep_report

        print(f"report: {write_sweep_report(_home(args), rest[0])}")
        return 0
    if rest:
        raise BackdoorLabError(
            "usage: backdoorlab sweep FILE | sweep list | sweep status ID | sweep report ID"
        )
    from backdoorlab.experiments.sweep import describe, load_sweep, run_sweep

    sweep = load_sweep(what)
    print(describe(sweep))
    if args.dry_run:
        for it in sweep.items:
            print(f"  #{it.idx:<4}{json.dumps(it.overrides)}")
        print("every config is valid (dry run: nothing was run)")
        return 0
    view = _SweepView()
    try:
        outcome = run_sweep(
            sweep,
            _home(args),
            backend=args.backend,
            workers=args.workers,
            address=args.address,
            retry_failed=args.retry_failed,
            progress=view,
        )
    finally:
        view.close()
    done = sum(it.status == "done" for it in outcome.items)
    print(f"sweep {sweep.id}: {done}/{len(outcome.items)} done in {outcome.seconds:.1f} s")
    for it in outcome.failed:
        print(f"  failed #{it.idx} {json.dumps(it.overrides)} after {it.attempts} attempts: {it.error}")
    print(f"aggregate with: backdoorlab sweep report {sweep.id}")
    return 1 if outcome.failed else 0


def cmd_ui(args: argparse.Namespace) -> int:
    from backdoorlab.ui import run_ui_cli  # lazy: a missing fastapi becomes a named error

    return run_ui_cli(_home(args), args.host, args.port, args.open, blind=args.blind)


def cmd_report(args: argparse.Namespace) -> int:
    from backdoorlab.experiments.runner import rerender_report

    print(f"report: {rerender_report(_home(args), args.id)}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from backdoorlab.data.registry import list_datasets

    for d in list_datasets():
        c, h, w = d.shape
        print(f"{d.name:<15}{c}×{h}×{w:<4}{d.num_classes:>3} classes  {d.description}")
        print(f"{'':<15}source: {d.source}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from backdoorlab.models import list_models

    for m in list_models():
        print(f"{m.name:<16}{m.description}")
    return 0


def cmd_models_inspect(args: argparse.Namespace) -> int:
    """Read a model file safely, print its card, and (with --data) check and score it on a dataset."""
    from backdoorlab.data.registry import load_dataset_from_flags
    from backdoorlab.metrics import accuracy
    from backdoorlab.models import check_input_shape, load_model

    options = _data_options(args.data_root, args.data_option or [])
    if options and not args.data:
        raise BackdoorLabError("--data-root and --data-option describe a data set: give it with --data NAME")
    model, card = load_model(args.file)
    c, h, w = card.input_shape
    print(f"{args.file}: {card.name}, input {c}×{h}×{w}, {len(card.classes)} classes")
    print(f"  classes: {', '.join(card.classes)}")
    print(f"  sha256:  {card.sha256}")
    print(f"  parameters: {sum(p.numel() for p in model.parameters()):,}")
    if args.data:
        _, test = load_dataset_from_flags(args.data, options)
        check_input_shape(model, test.shape)
        if test.num_classes != len(card.classes):
            raise BackdoorLabError(
                f"model has {len(card.classes)} classes, dataset {args.data!r} has {test.num_classes}"
            )
        print(f"  clean accuracy on {args.data} test split: {accuracy(model, test):.2%}")
    return 0


def cmd_models_import_alexnet(args: argparse.Namespace) -> int:
    """Convert torchvision-layout AlexNet weights (safetensors) into a backdoorlab model file."""
    from backdoorlab.models import import_torchvision_alexnet, load_model

    classes = None
    if args.classes_file:
        path = Path(args.classes_file)
        try:
            classes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise BackdoorLabError(
                f"--classes-file: cannot read {path} ({exc.__class__.__name__}); give a UTF-8 text file with "
                "one class name per line"
            ) from None
    out = import_torchvision_alexnet(args.src, args.out, classes=classes, input_size=args.input_size)
    _, card = load_model(out)
    c, h, w = card.input_shape
    shown = ", ".join(card.classes[:5]) + (", …" if len(card.classes) > 5 else "")
    print(f"wrote {out}: {card.name}, input {c}×{h}×{w} in [0, 1] (ImageNet normalisation inside)")
    print(f"  classes: {len(card.classes)} ({shown})")
    print(f"  sha256:  {card.sha256}")
    return 0


def cmd_attacks_list(args: argparse.Namespace) -> int:
    from backdoorlab.attacks import list_attacks
    from backdoorlab.attacks.registry import PYTHON_ONLY
    from backdoorlab.triggers import list_triggers

    print("attacks: " + ", ".join(list_attacks()))
    for name, how in PYTHON_ONLY.items():
        print(f"in Python only: {name} — {how}")
    print("triggers: " + ", ".join(list_triggers()))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from backdoorlab.experiments.reproduce import list_reproductions, reproduce

    if args.name in (None, "list"):
        for r in list_reproductions():
            print(f"{r.name:<14}{r.status:<10}{r.description}")
        return 0
    out = _with_bars(reproduce, args.name, args.scale, _home(args), recipe=args.recipe, workers=args.workers)
    print(f"report: {out}")
    return 0


def _data_options(root: str | None, items: Sequence[str]) -> dict[str, Any]:
    """The data loader's options from ``--data-root`` and ``--data-option KEY=VALUE`` (values read as YAML:
    ``size=32`` is an int). Only the paths given here are ever read."""
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BackdoorLabError(
                f"--data-option {item!r}: write it as key=value, e.g. size=32 or test_fraction=0.5"
            )
        options[key.strip()] = yaml.safe_load(value)
    if root is not None:
        if "root" in options:
            raise BackdoorLabError("give the data folder once: --data-root or --data-option root=…, not both")
        options["root"] = root
    return options


def cmd_audit(args: argparse.Namespace) -> int:
    from backdoorlab.audit.pipeline import run_audit_cli

    options = _data_options(args.data_root, args.data_option or [])
    out = _with_bars(
        run_audit_cli,
        args.model,
        args.data,
        args.classes,
        Path(args.out) if args.out else _home(args) / "audits",
        _home(args),
        seed=args.seed,
        quick=args.quick,
        data_options=options,
        sigma=args.sigma,
        eps=args.eps,
        denoiser=args.denoiser,
        n_images=args.n_images,
        n_eval=args.n_eval,
        steps=args.steps,
        m=args.m,
        reference=args.reference or (),
    )
    print(json.loads(out.with_suffix(".json").read_text())["verdict"]["reason"])
    print(f"report: {out}")
    return 0


def cmd_denoiser_train(args: argparse.Namespace) -> int:
    """Train a DnCNN denoiser for ``audit --denoiser`` (the paper's 17×64 by default)."""
    from backdoorlab.audit.pipeline import train_denoiser_cli

    options = _data_options(args.data_root, args.data_option or [])
    names = ("sigma", "depth", "width", "epochs", "max_images", "batch_size")
    given = {
        k: getattr(args, k) for k in names if getattr(args, k) is not None
    }  # else the function's defaults
    info = _with_bars(
        train_denoiser_cli,
        args.data,
        args.out,
        data_options=options,
        seed=args.seed,
        device=args.device,
        **given,
    )
    print(
        f"wrote {info['path']}: DnCNN {info['depth']}×{info['width']}, σ {info['sigma']:g}, "
        f"{info['images']} images × {info['epochs']} epoch(s)"
    )
    print(
        f"  test split ({info['test_images']} images): MSE {info['mse_noisy']:.4f} noisy → "
        f"{info['mse_denoised']:.4f} denoised (PSNR {info['psnr_noisy']:.1f} → {info['psnr_denoised']:.1f} dB)"
    )
    print(f"  use it: backdoorlab audit MODEL --data {args.data} --denoiser {info['path']}")
    return 0


def _add_data_flags(sp: argparse.ArgumentParser) -> None:
    """``--data-root`` and ``--data-option``: where a ``--data NAME`` data set lives and its loader's options."""
    sp.add_argument(
        "--data-root",
        metavar="PATH",
        help="the data set's folder: the files of cifar10 / mnist / fashion-mnist, or for `folder` your images "
        "as PATH/<class>/* (split by test_fraction) or PATH/train/<class>/* + PATH/test/<class>/*",
    )
    sp.add_argument(
        "--data-option",
        action="append",
        metavar="KEY=VALUE",
        help="another option of the data set's loader, e.g. size=32, channels=1, test_fraction=0.5 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="backdoorlab",
        description="Build, break, detect and defend backdoored image classifiers.",
    )
    p.add_argument("--home", help=f"workspace folder (default: $BACKDOORLAB_HOME or {DEFAULT_HOME})")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    # --home is accepted after the subcommand too
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def add(name: str, fn: Any, help: str, parent: Any = sub) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help, parents=[common])
        sp.set_defaults(fn=fn)
        return sp

    sp = add("run", cmd_run, "run an experiment described by a YAML config")
    sp.add_argument("config", help="experiment YAML file")
    sp.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="override a field, e.g. train.epochs=3"
    )
    sp = add(
        "demo", cmd_demo, "BadNets on the 5k MNIST digits: poisoned and clean LeNet, metrics, HTML report"
    )
    sp.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="override a field of the demo config"
    )

    runs = add("runs", lambda a: (runs.print_help(), 0)[1], "list and inspect stored runs")
    rsub = runs.add_subparsers(dest="runs_command", metavar="SUBCOMMAND")
    where = {
        "action": "append",
        "metavar": "FIELD=VALUE",
        "help": "keep runs whose config (or metrics.…) field has this value, e.g. attack.name=badnets",
    }
    sp = add("list", cmd_runs_list, "list runs, newest first", rsub)
    sp.add_argument("--limit", type=int, default=None)
    sp.add_argument("--where", **where)
    sp = add("export", cmd_runs_export, "write the runs as a Parquet (or CSV) table for pandas", rsub)
    sp.add_argument("--out", help="a .parquet or .csv file (default: <home>/runs.parquet)")
    sp.add_argument("--where", **where)
    sp = add(
        "compare", cmd_runs_compare, "the config fields that differ between runs, and their metrics", rsub
    )
    sp.add_argument("ids", nargs="+", help="two or more run ids (or unique prefixes)")
    sp = add("show", cmd_runs_show, "show one run's config and metrics", rsub)
    sp.add_argument("id", help="run id or a unique prefix of it")
    sp.add_argument("--json", action="store_true", help="print the whole record as JSON")

    sp = add(
        "sweep",
        cmd_sweep,
        "run a grid of experiments (sweep FILE), or: sweep list | sweep status ID | sweep report ID",
    )
    sp.add_argument("what", nargs="+", metavar="FILE | list | status ID | report ID")
    sp.add_argument("--backend", choices=["local", "ray"], default="local", help="worker pool or Ray")
    sp.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    sp.add_argument("--workers", type=int, help="parallel experiments (default: the file's, or cores / 2)")
    sp.add_argument("--retry-failed", action="store_true", help="try experiments recorded as failed again")
    sp.add_argument("--dry-run", action="store_true", help="expand and validate every config, run nothing")

    sp = add("ui", cmd_ui, "the interactive audit tool and results browser in a web page (Sun et al. App. D)")
    sp.add_argument(
        "--host", default=None, help="address to bind (default 127.0.0.1; any other prints a warning)"
    )
    sp.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    sp.add_argument("--open", action="store_true", help="open the page in the default browser")
    sp.add_argument(
        "--blind", action="store_true", help="hide model names, runs and ground truth (a user study)"
    )

    sp = add("report", cmd_report, "render the HTML report of a stored run")
    sp.add_argument("id", help="run id or a unique prefix of it")

    data = add("data", lambda a: (data.print_help(), 0)[1], "datasets")
    add(
        "list",
        cmd_data_list,
        "list the datasets",
        data.add_subparsers(dest="data_command", metavar="SUBCOMMAND"),
    )
    models = add("models", lambda a: (models.print_help(), 0)[1], "model architectures")
    msub = models.add_subparsers(dest="m_command", metavar="SUBCOMMAND")
    add("list", cmd_models_list, "list the architectures", msub)
    sp = add(
        "inspect", cmd_models_inspect, "read a model file safely (safetensors only) and describe it", msub
    )
    sp.add_argument("file", help="a .safetensors model file")
    sp.add_argument(
        "--data", help="also check its input shape against this dataset and report clean accuracy"
    )
    _add_data_flags(sp)
    sp = add(
        "import-alexnet",
        cmd_models_import_alexnet,
        "convert torchvision's AlexNet weights (a state dict saved with safetensors) into a backdoorlab model file",
        msub,
    )
    sp.add_argument(
        "src", metavar="SRC", help="torchvision-layout AlexNet state dict (.safetensors; pickles are refused)"
    )
    sp.add_argument("out", metavar="OUT", help="the backdoorlab model file to write (.safetensors)")
    sp.add_argument(
        "--classes-file",
        metavar="FILE",
        help="class names, one per line, in output order (default: 0, 1, …, 999)",
    )
    sp.add_argument(
        "--input-size",
        type=int,
        default=224,
        metavar="N",
        help="the N×N image size the model file declares (default 224, the paper recipes'; at least 63)",
    )
    attacks = add("attacks", lambda a: (attacks.print_help(), 0)[1], "attacks and triggers")
    add(
        "list",
        cmd_attacks_list,
        "list attacks and trigger kinds",
        attacks.add_subparsers(dest="a_command", metavar="SUBCOMMAND"),
    )

    den = add("denoiser", lambda a: (den.print_help(), 0)[1], "denoisers for the audit (Sun et al. App. A.2)")
    dsub = den.add_subparsers(dest="d_command", metavar="SUBCOMMAND")
    sp = add(
        "train",
        cmd_denoiser_train,
        "train a DnCNN to remove Gaussian noise from a data set's images and save it for `audit --denoiser`",
        dsub,
    )
    sp.add_argument("--data", required=True, help="the data set (its train split; the test split is scored)")
    _add_data_flags(sp)
    sp.add_argument("--out", required=True, metavar="FILE", help="the denoiser file to write (.safetensors)")
    sp.add_argument("--sigma", type=float, help="the noise σ on [0, 1] pixels (default 0.5)")
    sp.add_argument("--depth", type=int, metavar="N", help="conv layers (default 17, the paper's)")
    sp.add_argument("--width", type=int, metavar="N", help="channels (default 64, the paper's)")
    sp.add_argument(
        "--epochs", type=int, metavar="N", help="passes over the images (default: enough to see 4,000 images)"
    )
    sp.add_argument(
        "--max-images",
        type=int,
        metavar="N",
        help="a seeded subset of at most N training images (default 4,000)",
    )
    sp.add_argument("--batch-size", type=int, metavar="N", help="images per step (default 64)")
    sp.add_argument("--seed", type=int, default=0, help="initialisation, image subset and noise")
    sp.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, …")

    sp = add(
        "audit",
        cmd_audit,
        "audit a model file for a backdoor without its trigger or training data (Sun et al.)",
    )
    sp.add_argument("model", help="a .safetensors model file (pickles are refused)")
    sp.add_argument(
        "--data",
        required=True,
        help="the data set the model was trained on, or `folder` for your own clean images (its test split "
        "is audited; the train split trains the denoiser)",
    )
    _add_data_flags(sp)
    sp.add_argument(
        "--sigma",
        type=float,
        help="smoothing noise σ on [0, 1] pixels (default 0.5, or the --denoiser file's σ)",
    )
    sp.add_argument(
        "--eps",
        type=float,
        help="SmoothAdv's L2 radius on [0, 1] pixels (default: the paper's ε = 60 on 3×224×224 scaled to the "
        "image size)",
    )
    sp.add_argument(
        "--denoiser",
        metavar="FILE",
        help="a backdoorlab DnCNN denoiser file (.safetensors) to use instead of training one",
    )
    for flag, what in (
        ("--n-images", "probe images to attack (default 10; --quick: 6)"),
        ("--n-eval", "held-out images to measure triggers on (default 50; --quick: 60)"),
        ("--steps", "SmoothAdv PGD steps (default 100, the paper's; --quick: 30)"),
        (
            "--m",
            "noise draws per image in SmoothAdv (default 16, the paper's; --quick: 4)",
        ),
    ):
        sp.add_argument(flag, type=int, metavar="N", help=what)
    sp.add_argument(
        "--reference",
        action="append",
        metavar="JSON",
        help="the JSON summary of an earlier audit of a known-clean model on the same data (repeatable): a "
        "class is flagged only if its best candidate beats every rate those audits reached",
    )
    sp.add_argument(
        "--classes",
        nargs="+",
        metavar="CLASS",
        help="attack images of these classes only (indices or names; default all)",
    )
    sp.add_argument("--out", help="folder for the HTML report and JSON summary (default: <home>/audits)")
    sp.add_argument("--seed", type=int, default=0, help="seed of image choice, noise and patches")
    sp.add_argument(
        "--quick",
        action="store_true",
        help="30 steps, m = 4, 6 probe images: a rough answer in about a minute",
    )

    sp = add(
        "reproduce", cmd_reproduce, "reproduce a paper's tables and figures (`reproduce list` lists them)"
    )
    sp.add_argument("name", nargs="?", help="reproduction name, or 'list'")
    sp.add_argument(
        "--scale", choices=["small", "paper"], default="small", help="small: CPU minutes; paper: GPU"
    )
    sp.add_argument("--recipe", help="run this recipe file instead of the packaged one for --scale")
    sp.add_argument(
        "--workers",
        type=int,
        default=1,
        help="train independent models in this many processes, one torch thread each (turner2019)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    try:
        return int(args.fn(args) or 0)
    except BackdoorLabError as exc:
        print(f"backdoorlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("backdoorlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except Exception as exc:  # one readable line; the traceback only on request
        if args.debug:
            raise
        print(
            f"backdoorlab: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
