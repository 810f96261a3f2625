"""The one exception family of edge-agent.

Every error the agent or the converters raise on purpose is an ``EdgeAgentError``.
Errors from the outside world (runtime ``ValueError``s, paho return codes, ``OSError``)
are translated at the boundary with ``raise ... from exc`` and carry context
(model version, topic, path) in their message.

    EdgeAgentError
    ├── ConfigError            bad config.toml / environment override (key path + reason)
    │   └── PackageConflict    the config sets a key the model package decides, differently
    ├── ModelError             a model cannot be loaded or does not fit the pipeline
    │   ├── RuntimeUnavailable no usable TFLite runtime (names the package to install)
    │   ├── ShapeMismatch      window/preprocess/postprocess disagree with the model's tensors
    │   ├── IncompatibleModel  a package's manifest does not fit the pipeline (``reason``)
    │   └── BatchUnsupported   a model cannot run several windows in one invoke (``reason``)
    ├── InferenceError         invoke() or quantisation failed for one window (``reason``)
    ├── SampleError            one malformed sensor message (counted per ``reason`` and skipped)
    ├── SourceError            a sample source cannot start (file missing, program not found)
    ├── PublishError           MQTT connection or publish failure (``reason``)
    ├── SpoolError             the on-disk store-and-forward queue failed
    ├── PackageError           a model package is malformed, tampered or untrusted (``reason``)
    │   └── SignatureError     signature missing, unknown key or does not verify
    ├── UpdateError            an OTA update was refused or failed (``reason``)
    └── ConversionError        a converter step failed (build host only)
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base class of every error edge-agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """The configuration is invalid. ``problems`` holds one ``(key_path, reason)`` per error."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        lines = [f"{source}: {len(problems)} problem(s)"]
        lines += [f"  {path}: {reason}" for path, reason in problems]
        super().__init__("\n".join(lines))


class PackageConflict(ConfigError):
    """The config sets a key the model package decides, to another value (exit 78 at start).

    ``conflicts`` holds ``(key, config value, package value, reason)``; ``reason`` is the OTA
    refusal reason of the first one (``wrong_model``, ``incompatible_preprocess``, ...).
    """

    def __init__(
        self, package: str, conflicts: list[tuple[str, object, object, str]], source: str = "config"
    ) -> None:
        self.package = package
        self.conflicts = conflicts
        self.reason = conflicts[0][3] if conflicts else "incompatible_preprocess"
        super().__init__(
            [
                (key, f"config says {cv!r}, package {package} says {pv!r}")
                for key, cv, pv, _ in conflicts
            ],
            source,
        )


class ModelError(EdgeAgentError):
    """A model file cannot be loaded, or does not fit the configured pipeline."""


class RuntimeUnavailable(ModelError):
    """No usable TFLite runtime is installed for the requested ``runtime`` setting."""


class ShapeMismatch(ModelError):
    """The configured window/preprocess/postprocess disagree with the model's tensors."""


class IncompatibleModel(ModelError):
    """A package's manifest does not fit the configured pipeline. ``reason`` is a stable label
    (``agent_too_old``, ``incompatible_input``, ``incompatible_output``,
    ``incompatible_postprocess``, ``incompatible_preprocess``) that OTA reports as it is."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class BatchUnsupported(ModelError):
    """A model cannot run several windows in one invoke (``model.max_invoke_batch``); the
    pipeline then invokes once per window. ``reason`` is a stable label, set where it is raised:

    - ``off``: ``model.max_invoke_batch`` is 1;
    - ``stateful``: the model keeps state between invokes (never batched);
    - ``multi_input``: the model has more than one input;
    - ``batch_dim``: the input's first dimension is neither 1 nor -1;
    - ``signature``: the signature runs in another subgraph than the resized input;
    - ``resize_failed``: the runtime could not resize or allocate the batched input;
    - ``output_shape``: an output does not carry one row per window after the resize;
    - ``long_invoke``: one window's invoke takes a millisecond or more (batching saves nothing);
    - ``smoke_failed``: an invoke of the check failed;
    - ``mismatch``: the check's batched outputs differ from single invokes.
    """

    OFF = "off"
    STATEFUL = "stateful"
    MULTI_INPUT = "multi_input"
    BATCH_DIM = "batch_dim"
    SIGNATURE = "signature"
    RESIZE_FAILED = "resize_failed"
    OUTPUT_SHAPE = "output_shape"
    LONG_INVOKE = "long_invoke"
    SMOKE_FAILED = "smoke_failed"
    MISMATCH = "mismatch"

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class InferenceError(EdgeAgentError):
    """Running the model on one window failed. ``reason`` is a stable label, set where it is
    raised (metrics ``inference_errors{reason}``, the HTTP API's error code):

    - ``non_finite``: an output is NaN or Inf;
    - ``invoke_failed``: the runtime's ``invoke()`` raised;
    - ``bad_input``: the input could not be converted to the tensor's type;
    - ``output_size``: an output has another size than the postprocessing expects.
    """

    NON_FINITE = "non_finite"
    INVOKE_FAILED = "invoke_failed"
    BAD_INPUT = "bad_input"
    OUTPUT_SIZE = "output_size"

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


class SampleError(EdgeAgentError):
    """One sensor message is malformed. ``reason`` is a short stable label used in metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class SourceError(EdgeAgentError):
    """A sample source cannot start: its file is missing or unreadable, its program not found."""


class PublishError(EdgeAgentError):
    """An MQTT connection or publish failed. ``reason`` is a stable label, set where it is raised:

    - ``tls``: the TLS context could not be built (a CA, certificate or key file);
    - ``connect``: no TCP/TLS connection to the broker;
    - ``refused``: the broker refused the CONNECT (or did not answer it in time);
    - ``publish``: a publish failed or was not acknowledged in time;
    - ``subscribe``: a subscription was not acknowledged in time.
    """

    TLS = "tls"
    CONNECT = "connect"
    REFUSED = "refused"
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


class SpoolError(EdgeAgentError):
    """The on-disk store-and-forward queue failed."""


class PackageError(EdgeAgentError):
    """A model package is malformed, tampered with or untrusted. ``reason`` is a stable label."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class SignatureError(PackageError):
    """A signature is missing, made by an unknown key, or does not verify."""


class UpdateError(EdgeAgentError):
    """An OTA update was refused or failed. ``reason`` is a stable label reported over MQTT."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class ConversionError(EdgeAgentError):
    """A converter step (convert, verify, package, publish) failed on the build host."""
