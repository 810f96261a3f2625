"""``edge-convert``: the one build-host command (keygen, convert, package, verify-package,
publish, watch, serve). See docs/converters.md.

Exit codes: 0 success, 1 failure (the message says which step and why), 2 bad usage or
configuration, 3 verification thresholds missed (nothing written, nothing packaged).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import agent
from agent.durable import atomic_write
from agent.errors import ConfigError, EdgeAgentError, PackageError
from agent.release.manifest import Manifest, VerificationReport
from agent.release.package import check_package, read_package, write_package
from agent.release.signing import load_trusted_keys, write_keypair
from agent.terminal import console, is_terminal
from converters.convert import MODES
from converters.settings import BuildSettings, PublishSettings, validate_settings
from converters.tufcli import add_tuf_parser
from converters.verify import VerificationFailed, format_report

log = logging.getLogger("edge-convert")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_VERIFICATION = 3


def _setup_logging(verbose: bool) -> None:
    stream = console()  # a copy of fd 2: still the user's while TF's own stderr is captured
    tty = is_terminal(stream)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s" if tty else "%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=stream,
    )
    if not verbose:
        for noisy in ("tensorflow", "absl", "h5py", "agent.model.runtime", "litert"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # TensorFlow's C++ stderr (agent.model.native_stderr): its W lines are its internals
        logging.getLogger("tensorflow.native").setLevel(logging.ERROR)


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


LABEL_FILE_SUFFIXES = (".txt", ".json", ".csv", ".labels")


def _labels(text: str) -> list[str]:
    """``a,b,c``, or a file: a JSON list, or one name per line (a single line may be a,b,c)."""
    path = Path(text)
    looks_like_file = path.suffix.lower() in LABEL_FILE_SUFFIXES or "/" in text
    if not path.is_file():
        if looks_like_file:
            raise argparse.ArgumentTypeError(f"labels file {text} does not exist")
        return _csv(text)
    try:
        body = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read labels file {text}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(body)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text} is not JSON: {exc}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise argparse.ArgumentTypeError(f"{text} must hold a JSON list of strings")
        return names
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    if len(lines) == 1 and "," in lines[0]:
        return _csv(lines[0])
    if not lines:
        raise argparse.ArgumentTypeError(f"labels file {text} is empty")
    return lines


def _floats(text: str) -> list[float]:
    try:
        return [float(p) for p in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _config_table(path: Path | None, table: str) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([("(file)", str(exc))], str(path)) from None
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError([(table, "must be a table")], str(path))
    return section


# --------------------------------------------------------------------------- arguments


def _add_build_args(p: argparse.ArgumentParser, *, package: bool) -> None:
    p.add_argument("model", type=Path, help=".keras/.h5 file, SavedModel dir, .tflite or .onnx")
    p.add_argument("--config", type=Path, help="TOML file whose [build] table gives defaults")
    p.add_argument("--mode", choices=MODES, help="conversion mode (default int8)")
    p.add_argument("--io-type", choices=("int8", "uint8", "float32"), help="int8 model I/O type")
    p.add_argument("--calibration", type=Path, help="representative data (.npy/.npz/.csv)")
    p.add_argument(
        "--samples",
        type=int,
        dest="calibration_samples",
        help="use the first N calibration samples",
    )
    p.add_argument("--validation", type=Path, help="validation data (default: calibration)")
    p.add_argument("--validation-samples", type=int, help="use the first N validation samples")
    p.add_argument(
        "--labels",
        type=_labels,
        help="class names in output order: a,b,c, or a file (one per line, or a JSON list)",
    )
    p.add_argument("--max-accuracy-drop", type=float, help="fail above this drop (e.g. 0.02)")
    p.add_argument("--min-agreement", type=float, help="fail below this top-1 agreement")
    p.add_argument("--runtime", choices=("auto", "litert", "tflite-runtime", "tensorflow"))
    p.add_argument("--report", type=Path, help="write the verification report (JSON) here")
    p.add_argument(
        "--html-report",
        type=Path,
        help="write the verification report as an HTML page here (default: next to the output, "
        "OUTPUT.report.html)",
    )
    p.add_argument(
        "--onnx2tf-arg",
        action="append",
        dest="onnx2tf_args",
        metavar="ARG",
        help="ONNX sources: one onnx2tf argument, repeatable in order "
        "(--onnx2tf-arg=-kat --onnx2tf-arg=x --onnx2tf-arg=-b --onnx2tf-arg=1)",
    )
    if not package:
        p.add_argument("-o", "--output", type=Path, help="output .tflite")
        return
    p.add_argument("--name", help="model name (topic part)")
    p.add_argument("--version", help="semantic version, e.g. 1.4.0")
    p.add_argument("--description", help="free text for the manifest")
    p.add_argument("--key", type=Path, dest="private_key", help="Ed25519 private key to sign with")
    p.add_argument("--min-agent-version", help="oldest agent that may load it")
    p.add_argument("--golden", type=int, dest="golden_samples", help="golden samples (default 3)")
    p.add_argument("--window", type=int, help="preprocess: samples per window")
    p.add_argument("--hop", type=int, help="preprocess: samples between windows")
    p.add_argument("--channels", type=int, help="preprocess: values per sample")
    p.add_argument("--normalize", choices=("none", "standard", "minmax"))
    for stat in ("mean", "std", "min", "max"):
        p.add_argument(f"--{stat}", type=_floats, help=f"preprocess: per-channel {stat}")
    p.add_argument(
        "--postprocess", choices=("classification", "regression", "anomaly", "raw", "detection")
    )
    p.add_argument("--anomaly-threshold", type=float, help="postprocess threshold (anomaly)")
    p.add_argument("-o", "--output", type=Path, help="output .eapkg (default NAME-VERSION.eapkg)")


_BUILD_KEYS = (
    "mode",
    "io_type",
    "calibration",
    "calibration_samples",
    "validation",
    "validation_samples",
    "labels",
    "max_accuracy_drop",
    "min_agreement",
    "runtime",
    "name",
    "version",
    "description",
    "private_key",
    "min_agent_version",
    "golden_samples",
    "onnx2tf_args",
)


def _build_settings(args: argparse.Namespace, *, package: bool) -> BuildSettings:
    base = args.config.resolve().parent if args.config else Path.cwd()
    data = _config_table(args.config, "build")
    for key in _BUILD_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    if package:
        pre = dict(data.get("preprocess") or {})
        for key in ("window", "hop", "channels", "normalize", "mean", "std", "min", "max"):
            if getattr(args, key) is not None:
                pre[key] = getattr(args, key)
        if pre:
            data["preprocess"] = pre
        post = dict(data.get("postprocess") or {})
        if args.postprocess:
            post["type"] = args.postprocess
        if args.anomaly_threshold is not None:
            post["threshold"] = args.anomaly_threshold
        if post:
            data["postprocess"] = post
    else:
        data.setdefault("name", "model")
    source = str(args.config) if args.config else "command line"
    return validate_settings(BuildSettings, data, source).resolved(base)


def _save_report(path: Path | None, report: VerificationReport | None) -> None:
    if path is not None and report is not None:
        atomic_write(path, report.model_dump_json(indent=2).encode())
        log.info("report written to %s", path)


def _save_html(
    path: Path,
    report: VerificationReport | None,
    title: str,
    labels: Sequence[str] = (),
    manifest: Manifest | None = None,
) -> None:
    """The HTML report (``agent.release.report``: the dashboard shows the same fragment)."""
    from agent.release.report import manifest_report, render_report, report_document

    if manifest is not None:
        fragment = manifest_report(manifest)
    else:
        fragment = render_report(report, title=title, labels=labels)
    atomic_write(path, report_document(fragment, title).encode())
    print(f"HTML report: {path}")


# --------------------------------------------------------------------------- commands


def cmd_keygen(args: argparse.Namespace) -> int:
    """``edge-convert keygen``: write an Ed25519 key pair."""
    prefix: Path = args.prefix
    priv, pub = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    key = write_keypair(priv, pub, overwrite=args.force)
    print(f"private key: {priv} (mode 0600: keep it on the build host)")
    print(f"public key:  {pub} (configure devices to trust it: ota.trusted_keys)")
    print(f"key id:      {key.key_id}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """``edge-convert convert``: convert and verify a model, write the .tflite and reports."""
    from converters.build import convert_and_verify

    settings = _build_settings(args, package=False)
    out: Path = args.output or args.model.with_name(f"{args.model.stem}.{settings.mode}.tflite")
    report_path = args.report or out.with_name(out.name + ".report.json")
    html_path = args.html_report or out.with_name(out.name + ".report.html")
    title = f"{args.model.name} -> {out.name}"
    try:
        result = convert_and_verify(args.model, settings)
    except VerificationFailed as exc:
        print(format_report(exc.report))
        _save_report(report_path, exc.report)
        _save_html(html_path, exc.report, f"{title} (FAILED)", settings.labels)
        return EXIT_VERIFICATION
    atomic_write(out, result.model)
    if result.report is not None:
        print(format_report(result.report))
        _save_report(report_path, result.report)
        _save_html(html_path, result.report, title, settings.labels)
    print(f"wrote {out} ({len(result.model):,} bytes, {result.mode})")
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    """``edge-convert package``: convert, verify, package and sign a model (.eapkg)."""
    from converters.build import build_package

    settings = _build_settings(args, package=True)
    try:
        built = build_package(args.model, settings)
    except VerificationFailed as exc:
        print(format_report(exc.report))
        _save_report(args.report, exc.report)
        intended: Path = args.output or Path.cwd() / f"{settings.name}-{settings.version}.eapkg"
        failed = args.html_report or intended.with_name(intended.name + ".report.html")
        _save_html(
            failed, exc.report, f"{settings.name} {settings.version} (FAILED)", settings.labels
        )
        return EXIT_VERIFICATION
    pkg = built.package
    out: Path = args.output or Path.cwd() / pkg.filename
    write_package(out, pkg)
    if built.converted.report is not None:
        print(format_report(built.converted.report))
        _save_report(args.report, built.converted.report)
    html_path = args.html_report or out.with_name(out.name + ".report.html")
    _save_html(html_path, built.converted.report, pkg.filename, manifest=pkg.manifest)
    signed = f"signed by {pkg.key_id}" if pkg.signed else "UNSIGNED"
    print(
        f"wrote {out} ({pkg.manifest.name} {pkg.manifest.version}, {pkg.manifest.mode}, {signed})"
    )
    return 0


def cmd_verify_package(args: argparse.Namespace) -> int:
    """``edge-convert verify-package``: check a package offline."""
    try:
        pkg = read_package(args.package)
    except PackageError as exc:
        print(f"FAIL {exc.reason}: {exc.detail}")
        return EXIT_FAILED
    keys = load_trusted_keys(args.trusted_key)
    problems: list[PackageError] = []
    if keys or args.allow_unsigned:
        signer, problems = check_package(pkg, keys, args.allow_unsigned)
        sig_note = f"signature OK (key {signer.key_id})" if signer else "signature not required"
    else:
        _, problems = check_package(pkg, [], allow_unsigned=True)
        sig_note = "signature NOT checked: give --trusted-key PUB"
    m = pkg.manifest
    print(
        f"{args.package}: {m.name} {m.version} ({m.mode}, {m.artifact.size:,} bytes, "
        f"signed by {pkg.key_id or 'nobody'})"
    )
    for p in problems:
        print(f"FAIL {p.reason}: {p.detail}")
    if not any(p.reason in {"unsigned", "unknown_key", "bad_signature"} for p in problems):
        print(sig_note)
    if not problems and args.golden:
        problems_golden = _run_golden(pkg.model, m)
        for line in problems_golden:
            print(f"FAIL golden: {line}")
        if problems_golden:
            return EXIT_FAILED
        print(f"golden samples OK ({len(m.golden)})")
    if not problems:
        print("OK")
    return EXIT_FAILED if problems else 0


def _run_golden(model_bytes: bytes, manifest: Any) -> list[str]:
    from agent.model.runtime import load_model

    model = load_model(model_bytes)
    out = []
    for g in manifest.golden:
        outputs = model.run([x.to_numpy() for x in g.inputs])
        out += [f"{g.name}: {p}" for p in g.mismatches(outputs)]
    return out


def _mqtt_from_args(args: argparse.Namespace, data: dict[str, Any]) -> None:
    mqtt = dict(data.get("mqtt") or {})
    for flag, key in (
        ("mqtt_host", "host"),
        ("mqtt_port", "port"),
        ("topic_prefix", "topic_prefix"),
        ("mqtt_username", "username"),
        ("mqtt_password_file", "password_file"),
    ):
        if getattr(args, flag) is not None:
            mqtt[key] = getattr(args, flag)
    if mqtt:
        data["mqtt"] = mqtt


def cmd_publish(args: argparse.Namespace) -> int:
    """``edge-convert publish``: upload a package to a store and announce it."""
    from converters.publish import publish_package

    base = args.config.resolve().parent if args.config else Path.cwd()
    data = _config_table(args.config, "publish")
    for key in ("store", "base_url", "s3_endpoint_url", "channel"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.force:
        data["force"] = True
    if args.trusted_key:
        data["trusted_keys"] = args.trusted_key
    targets = dict(data.get("targets") or {})
    if args.groups is not None:
        targets["groups"] = args.groups
    if args.percent is not None:
        targets["percent"] = args.percent
    if targets:
        data["targets"] = targets
    _mqtt_from_args(args, data)
    settings = validate_settings(PublishSettings, data, str(args.config or "command line"))
    pkg = read_package(args.package)
    result = publish_package(pkg, settings.resolved(base))
    print(
        f"{pkg.manifest.name} {pkg.manifest.version} -> {result.url}"
        f"{'' if result.uploaded else ' (already stored)'}"
    )
    if result.topic:
        print(f"announced on {result.topic} (retained), targets {settings.targets.model_dump()}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """``edge-convert watch``: build packages from models dropped in a folder."""
    from converters.watch import DropWatcher, watch_forever

    folder: Path = args.folder
    if not folder.is_dir():
        raise ConfigError([("DROP_DIR", f"{folder} is not a directory")], "watch")
    if args.once:
        reports = DropWatcher(folder, settle_s=args.settle).run_once()
        for r in reports:
            print(f"{r.input}: {r.status}" + (f" ({r.failed_step}: {r.error})" if r.error else ""))
        return EXIT_FAILED if any(r.status == "failed" for r in reports) else 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    watch_forever(folder, stop)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``edge-convert serve``: serve a directory over HTTP (development only)."""
    from converters.serve import make_server

    server = make_server(args.directory, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving {args.directory} on http://{host!s}:{port} (development only; Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``edge-convert`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="edge-convert",
        description="Turn trained models into verified, signed packages on OTA channels.",
    )
    parser.add_argument("--version", action="version", version=f"edge-convert {agent.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="write an Ed25519 key pair (PREFIX.key 0600, PREFIX.pub)")
    p.add_argument("prefix", type=Path, help="e.g. keys/release -> keys/release.key/.pub")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("convert", help="convert and verify a model (.tflite + report)")
    _add_build_args(p, package=False)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("package", help="convert, verify, package and sign (.eapkg)")
    _add_build_args(p, package=True)
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("verify-package", help="check a package offline")
    p.add_argument("package", type=Path)
    p.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        default=[],
        help="public key (PEM) to accept; repeatable",
    )
    p.add_argument("--allow-unsigned", action="store_true", help="accept unsigned packages")
    p.add_argument("--golden", action="store_true", help="also run the golden samples")
    p.set_defaults(func=cmd_verify_package)

    p = sub.add_parser("publish", help="upload a package and announce it on a channel")
    p.add_argument("package", type=Path)
    p.add_argument("--config", type=Path, help="TOML file whose [publish] table gives defaults")
    p.add_argument("--store", help="directory or s3://bucket/prefix")
    p.add_argument("--base-url", help="URL the store is served at")
    p.add_argument("--s3-endpoint-url", help="S3-compatible endpoint")
    p.add_argument("--channel", help="channel (default stable)")
    p.add_argument("--groups", type=_csv, help="target device groups: a,b (default all)")
    p.add_argument("--percent", type=float, help="rollout percentage 0..100 (default 100)")
    p.add_argument("--force", action="store_true", help="allow an older version on the channel")
    p.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        help="refuse unless signed by this key; repeatable",
    )
    p.add_argument("--mqtt-host", help="broker to announce on (none: upload only)")
    p.add_argument("--mqtt-port", type=int)
    p.add_argument("--topic-prefix", help="MQTT topic prefix (default edge)")
    p.add_argument("--mqtt-username")
    p.add_argument("--mqtt-password-file", type=Path)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("watch", help="convert/package/publish models dropped into a folder")
    p.add_argument("folder", type=Path, metavar="DROP_DIR")
    p.add_argument("--once", action="store_true", help="process what is there now and exit")
    p.add_argument("--settle", type=float, help="seconds a file must be unchanged")
    p.set_defaults(func=cmd_watch)

    add_tuf_parser(sub)

    p = sub.add_parser("serve", help="serve an artifact store directory over HTTP (development)")
    p.add_argument("directory", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("onnx-env", help="make the onnx2tf environment now (else on first .onnx)")
    p.set_defaults(func=cmd_onnx_env)
    return parser


def cmd_onnx_env(args: argparse.Namespace) -> int:
    """``edge-convert onnx-env``: create the onnx2tf environment."""
    from converters.onnxenv import OnnxEnv, default_root

    env = OnnxEnv(default_root())
    env.ensure()
    print(f"onnx2tf environment: {env.root} ({' '.join(env.requirements)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-convert``: run the subcommand, its exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"edge-convert: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileExistsError as exc:
        print(f"edge-convert: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EdgeAgentError as exc:
        print(f"edge-convert {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
