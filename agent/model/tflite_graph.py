"""Reading and rewriting .tflite flatbuffers: op counts and the float-I/O wrapper.

Works on the generated schema module (``schema_py_generated``) that ``agent.model.runtime`` hands
in, taken from whichever runtime package is installed: this module imports no runtime.

``float_io`` puts a QUANTIZE op in front of each quantized (int8/uint8/int16) input of the
subgraph that will run and a DEQUANTIZE op behind each quantized output, so the interpreter
takes and returns float32 and does the conversion inside ``invoke()`` with TFLite's own
kernels: no per-call NumPy work, and TFLite's rounding. The signature defs are re-pointed to
the new float tensors; nothing else in the model changes.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass
from types import ModuleType
from typing import Any


def op_counts(content: bytes, schema: ModuleType) -> dict[str, int]:
    """Builtin op name -> uses over all subgraphs; custom ops as ``CUSTOM:<code>``."""
    counts: Counter[str] = Counter()
    for sub in subgraph_ops(content, schema):
        counts.update(sub.ops)
    return dict(counts)


@dataclass(frozen=True)
class SubgraphOps:
    """One subgraph's name (may be empty) and its op name -> uses."""

    index: int
    name: str
    ops: dict[str, int]


def subgraph_ops(content: bytes, schema: ModuleType) -> list[SubgraphOps]:
    """Op counts per subgraph, in subgraph order (custom ops as ``CUSTOM:<code>``)."""
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    m = schema.Model.GetRootAs(content, 0)
    codes = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        name = names.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            custom = oc.CustomCode()
            name = f"CUSTOM:{custom.decode(errors='replace') if custom else '?'}"
        codes.append(name)
    out = []
    for s in range(m.SubgraphsLength()):
        sg = m.Subgraphs(s)
        counts: Counter[str] = Counter()
        for j in range(sg.OperatorsLength()):
            counts[codes[sg.Operators(j).OpcodeIndex()]] += 1
        raw = sg.Name()
        out.append(SubgraphOps(s, raw.decode(errors="replace") if raw else "", dict(counts)))
    return out


def variable_tensors(content: bytes, schema: ModuleType) -> int:
    """How many tensors are variables (state kept between invokes, e.g. old-style LSTMs)."""
    m = schema.Model.GetRootAs(content, 0)
    n = 0
    for s in range(m.SubgraphsLength()):
        sg = m.Subgraphs(s)
        n += sum(1 for j in range(sg.TensorsLength()) if sg.Tensors(j).IsVariable())
    return n


@dataclass(frozen=True)
class WrappedTensor:
    """A quantized I/O tensor that ``float_io`` wrapped: its original identity."""

    index: int
    name: str
    dtype: str
    scale: float
    zero_point: int


def float_io(
    content: bytes, schema: ModuleType, signature: str | None
) -> tuple[bytes, dict[int, WrappedTensor]]:
    """Give the model float I/O: QUANTIZE before each quantized input, DEQUANTIZE after each
    quantized output, in the subgraph that will run. Returns the new bytes and, per new float
    tensor index, the quantized tensor it stands for. No quantized I/O: ``(content, {})``.

    TFLite's own kernels then do the (de)quantization inside invoke(): no per-call NumPy
    work, and TFLite's rounding (bit-exact with the C library).
    """
    types = {schema.TensorType.INT8: "int8", schema.TensorType.UINT8: "uint8"}
    types[schema.TensorType.INT16] = "int16"
    m = schema.ModelT.InitFromPackedBuf(content, 0)
    sigs = m.signatureDefs or []
    sub = 0
    if sigs:
        keys = {(sd.signatureKey or b"").decode(): sd for sd in sigs}
        if signature is None and len(keys) == 1:
            signature = next(iter(keys))
        if signature not in keys:
            return content, {}  # the interpreter reports the signature problem
        sub = int(keys[signature].subgraphIndex)
    sg = m.subgraphs[sub]

    def quantized(ti: int) -> bool:
        t = sg.tensors[ti]
        q = t.quantization
        scale = getattr(q, "scale", None)
        return t.type in types and scale is not None and len(scale) == 1 and scale[0] > 0

    ins = [int(ti) for ti in sg.inputs if quantized(ti)]
    outs = [int(ti) for ti in sg.outputs if quantized(ti)]
    if not ins and not outs:
        return content, {}

    def opcode(code: int) -> int:
        for i, oc in enumerate(m.operatorCodes):
            if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
                return i
        oc = schema.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, code, 1
        m.operatorCodes.append(oc)
        return len(m.operatorCodes) - 1

    empty = schema.BufferT()
    m.buffers.append(empty)
    empty_index = len(m.buffers) - 1
    remap: dict[int, int] = {}
    wrapped: dict[int, WrappedTensor] = {}

    def float_twin(ti: int) -> int:
        t = sg.tensors[ti]
        nt = schema.TensorT()
        nt.shape, nt.shapeSignature, nt.hasRank = t.shape, t.shapeSignature, t.hasRank
        nt.type, nt.buffer = schema.TensorType.FLOAT32, empty_index
        nt.name = (t.name or b"") + b"/float"
        sg.tensors.append(nt)
        new = len(sg.tensors) - 1
        remap[ti] = new
        q = t.quantization
        name = (t.name or b"").decode(errors="replace")
        zp = int(q.zeroPoint[0]) if q.zeroPoint is not None and len(q.zeroPoint) else 0
        wrapped[new] = WrappedTensor(int(ti), name, types[t.type], float(q.scale[0]), zp)
        return new

    def op(code: int, inp: int, out: int) -> Any:
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = opcode(code), [inp], [out]
        return o

    pre = [op(schema.BuiltinOperator.QUANTIZE, float_twin(ti), ti) for ti in ins]
    post = [op(schema.BuiltinOperator.DEQUANTIZE, ti, float_twin(ti)) for ti in outs]
    sg.inputs = [remap.get(int(ti), int(ti)) for ti in sg.inputs]
    sg.outputs = [remap.get(int(ti), int(ti)) for ti in sg.outputs]
    sg.operators = pre + list(sg.operators or []) + post
    for sd in sigs:
        if int(sd.subgraphIndex) == sub:
            for tm in list(sd.inputs or []) + list(sd.outputs or []):
                tm.tensorIndex = remap.get(int(tm.tensorIndex), int(tm.tensorIndex))
    # flatbuffers comes with every schema module (it imports it); not a dependency of ours
    builder = importlib.import_module("flatbuffers").Builder(len(content) + 4096)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), wrapped
