"""The ops of ``tflite_onnx``: one method per TFLite builtin, with TFLite's semantics.

Each ``op_<name>(op, ins, outs)`` writes ONNX nodes whose result carries the name of the
TFLite output tensor (``self.name(outs[0])``). Helpers (``name``, ``const``, ``init``,
``node``, ``i64``, ``opts``, ``act``, ``signature``, ``dtype``) live on the converter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_I64_MAX = int(np.iinfo(np.int64).max)
_I64_MIN = int(np.iinfo(np.int64).min)


class UnsupportedOp(ValueError):
    """The graph uses an op (or an op option) this converter does not implement."""


class OpsMixin:
    """Op conversions; mixed into the converter, whose helpers they call."""

    # The converter provides these (declared for type checkers).
    onnx: Any
    masks: dict[int, tuple[int, float]]
    name: Any
    const: Any
    const_required: Any
    init: Any
    node: Any
    i64: Any
    opts: Any
    act: Any
    signature: Any
    dtype: Any

    def _elem(self, idx: int) -> int:
        return int(self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype(idx))))

    # --- elementwise ----------------------------------------------------------------------

    def _binary(self, onnx_op: str, options: str, ins: list[int], outs: list[int], op: Any) -> None:
        o = self.opts(op, options)
        code = o.FusedActivationFunction() if o is not None else 0
        x = self.node(onnx_op, [self.name(ins[0]), self.name(ins[1])])
        self.act(x, code, self.name(outs[0]))

    def op_add(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._binary("Add", "AddOptions", ins, outs, op)

    def op_sub(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._binary("Sub", "SubOptions", ins, outs, op)

    def op_mul(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._binary("Mul", "MulOptions", ins, outs, op)

    def op_div(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._binary("Div", "DivOptions", ins, outs, op)

    def _simple(self, onnx_op: str, ins: list[int], outs: list[int], **attrs: Any) -> None:
        self.node(onnx_op, [self.name(i) for i in ins], self.name(outs[0]), **attrs)

    def op_maximum(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._simple("Max", ins, outs)

    def op_minimum(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._simple("Min", ins, outs)

    def op_floor_mod(self, op: Any, ins: list[int], outs: list[int]) -> None:
        # ONNX Mod with fmod=0 takes the divisor's sign: Python's (floor) modulo.
        self._simple("Mod", ins, outs, fmod=0)

    def op_less(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._simple("Less", ins, outs)

    def op_greater_equal(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._simple("GreaterOrEqual", ins, outs)

    def op_not_equal(self, op: Any, ins: list[int], outs: list[int]) -> None:
        eq = self.node("Equal", [self.name(ins[0]), self.name(ins[1])])
        self.node("Not", [eq], self.name(outs[0]))

    def op_squared_difference(self, op: Any, ins: list[int], outs: list[int]) -> None:
        d = self.node("Sub", [self.name(ins[0]), self.name(ins[1])])
        self.node("Mul", [d, d], self.name(outs[0]))

    def op_rsqrt(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self.node("Reciprocal", [self.node("Sqrt", [self.name(ins[0])])], self.name(outs[0]))

    def op_exp(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._simple("Exp", ins, outs)

    def op_log(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._simple("Log", ins, outs)

    def op_tanh(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._simple("Tanh", ins, outs)

    def op_round(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._simple("Round", ins, outs)  # both round half to even

    def op_leaky_relu(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._simple("LeakyRelu", ins, outs, alpha=float(self.opts(op, "LeakyReluOptions").Alpha()))

    def op_cast(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._simple("Cast", ins, outs, to=self._elem(outs[0]))

    def op_dequantize(self, op: Any, ins: list[int], outs: list[int]) -> None:
        # Quantized tensors (int8 weights, the gathered embedding) are carried as float.
        self._simple("Identity", ins, outs)

    def op_quantize(self, op: Any, ins: list[int], outs: list[int]) -> None:
        # MB-MelGAN's last activation is rounded to 8 bits only to feed an int8 op; the
        # float model had no such step, so the float value goes on unrounded.
        self._simple("Identity", ins, outs)

    def op_softmax(self, op: Any, ins: list[int], outs: list[int]) -> None:
        beta = float(self.opts(op, "SoftmaxOptions").Beta())
        x = self.name(ins[0])
        if beta != 1.0:
            x = self.node("Mul", [x, self.init(np.float32(beta))])
        self.node("Softmax", [x], self.name(outs[0]), axis=-1)

    # --- shapes ---------------------------------------------------------------------------

    def op_shape(self, op: Any, ins: list[int], outs: list[int]) -> None:
        shape = self.node("Shape", [self.name(ins[0])])
        self.node("Cast", [shape], self.name(outs[0]), to=self._elem(outs[0]))

    def op_reshape(self, op: Any, ins: list[int], outs: list[int]) -> None:
        if len(ins) > 1 and ins[1] >= 0:
            shape = self.i64(ins[1])
        else:
            shape = self.init(self.opts(op, "ReshapeOptions").NewShapeAsNumpy().astype(np.int64))
        self.node("Reshape", [self.name(ins[0]), shape], self.name(outs[0]))

    def op_expand_dims(self, op: Any, ins: list[int], outs: list[int]) -> None:
        axis = np.asarray(self.const_required(ins[1], "EXPAND_DIMS axis")).reshape(-1).astype(np.int64)
        self.node("Unsqueeze", [self.name(ins[0]), self.init(axis)], self.name(outs[0]))

    def op_squeeze(self, op: Any, ins: list[int], outs: list[int]) -> None:
        o = self.opts(op, "SqueezeOptions")
        dims = o.SqueezeDimsAsNumpy() if o is not None and o.SqueezeDimsLength() else None
        inputs = [self.name(ins[0])]
        if dims is not None:
            inputs.append(self.init(np.asarray(dims, np.int64)))
        self.node("Squeeze", inputs, self.name(outs[0]))

    def op_pack(self, op: Any, ins: list[int], outs: list[int]) -> None:
        axis = int(self.opts(op, "PackOptions").Axis())
        ax = self.init(np.asarray([axis], np.int64))
        parts = [self.node("Unsqueeze", [self.name(i), ax]) for i in ins]
        self.node("Concat", parts, self.name(outs[0]), axis=axis)

    def op_concatenation(self, op: Any, ins: list[int], outs: list[int]) -> None:
        o = self.opts(op, "ConcatenationOptions")
        x = self.node("Concat", [self.name(i) for i in ins], axis=int(o.Axis()))
        self.act(x, o.FusedActivationFunction(), self.name(outs[0]))

    def op_transpose(self, op: Any, ins: list[int], outs: list[int]) -> None:
        perm = self.const_required(ins[1], "TRANSPOSE perm").astype(int).tolist()
        self._simple("Transpose", ins[:1], outs, perm=perm)

    def op_gather(self, op: Any, ins: list[int], outs: list[int]) -> None:
        o = self.opts(op, "GatherOptions")
        if o.BatchDims() != 0:
            raise UnsupportedOp("GATHER with batch_dims")
        self._simple("Gather", ins, outs, axis=int(o.Axis()))

    def op_strided_slice(self, op: Any, ins: list[int], outs: list[int]) -> None:
        o = self.opts(op, "StridedSliceOptions")
        if o.EllipsisMask() or o.NewAxisMask() or o.Offset():
            raise UnsupportedOp("STRIDED_SLICE with ellipsis, new axis or offset")
        begin, end, steps = (self.const_required(i, "STRIDED_SLICE bounds").astype(np.int64).reshape(-1)
                             for i in ins[1:4])
        starts, ends, shrink = [], [], []
        for axis, (b, e, s) in enumerate(zip(begin.tolist(), end.tolist(), steps.tolist(), strict=True)):
            if o.BeginMask() >> axis & 1:
                b = 0 if s > 0 else _I64_MAX
            if o.EndMask() >> axis & 1:
                e = _I64_MAX if s > 0 else _I64_MIN
            if o.ShrinkAxisMask() >> axis & 1:
                e = _I64_MAX if b == -1 else b + 1
                shrink.append(axis)
            starts.append(b)
            ends.append(e)
        inputs = [self.name(ins[0]), self.init(np.asarray(starts, np.int64)), self.init(np.asarray(ends, np.int64)),
                  self.init(np.arange(len(starts), dtype=np.int64)), self.init(steps)]
        if not shrink:
            self.node("Slice", inputs, self.name(outs[0]))
            return
        sliced = self.node("Slice", inputs)
        self.node("Squeeze", [sliced, self.init(np.asarray(shrink, np.int64))], self.name(outs[0]))

    def op_range(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._simple("Range", ins, outs)

    def op_fill(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self.node("Expand", [self.name(ins[1]), self.i64(ins[0])], self.name(outs[0]))

    def op_tile(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self.node("Tile", [self.name(ins[0]), self.i64(ins[1])], self.name(outs[0]))

    def op_where(self, op: Any, ins: list[int], outs: list[int]) -> None:
        if len(ins) != 1:
            raise UnsupportedOp("WHERE with x and y (select)")
        idx = self.node("Transpose", [self.node("NonZero", [self.name(ins[0])])], perm=[1, 0])
        self.node("Cast", [idx], self.name(outs[0]), to=self._elem(outs[0]))

    def _pads(self, idx: int) -> str:
        """TFLite paddings [rank, 2] → ONNX pads [begins..., ends...] (int64)."""
        value = self.const(idx)
        if value is not None:
            return self.init(value.astype(np.int64).T.reshape(-1))
        t = self.node("Transpose", [self.i64(idx)], perm=[1, 0])
        return self.node("Reshape", [t, self.init(np.asarray([-1], np.int64))])

    def op_pad(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self.node("Pad", [self.name(ins[0]), self._pads(ins[1])], self.name(outs[0]))

    def op_mirror_pad(self, op: Any, ins: list[int], outs: list[int]) -> None:
        if self.opts(op, "MirrorPadOptions").Mode() != 0:
            raise UnsupportedOp("MIRROR_PAD SYMMETRIC")  # ONNX has only the REFLECT kind
        self.node("Pad", [self.name(ins[0]), self._pads(ins[1])], self.name(outs[0]), mode="reflect")

    # --- reductions -----------------------------------------------------------------------

    def _reduce(self, onnx_op: str, op: Any, ins: list[int], outs: list[int]) -> None:
        axes = np.asarray(self.const_required(ins[1], "reduction axes")).reshape(-1).astype(np.int64)
        if axes.size == 0:  # TF reduces over nothing; ONNX would reduce over everything
            self._simple("Identity", ins[:1], outs)
            return
        keep = int(bool(self.opts(op, "ReducerOptions").KeepDims()))
        self.node(onnx_op, [self.name(ins[0]), self.init(axes)], self.name(outs[0]), keepdims=keep)

    def op_mean(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._reduce("ReduceMean", op, ins, outs)

    def op_sum(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._reduce("ReduceSum", op, ins, outs)

    def op_reduce_prod(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._reduce("ReduceProd", op, ins, outs)

    def op_reduce_max(self, op: Any, ins: list[int], outs: list[int]) -> None:
        self._reduce("ReduceMax", op, ins, outs)

    # --- dropout --------------------------------------------------------------------------

    def op_custom_flexrandomuniform(self, op: Any, ins: list[int], outs: list[int]) -> None:
        # The whole mask chain (see find_dropout): a constant of the tensor's shape.
        mask, keep = self.masks[int(outs[0])]
        value = self.onnx.numpy_helper.from_array(np.asarray([keep], np.float32), "keep")
        self.node("ConstantOfShape", [self.i64(ins[0])], self.name(mask), value=value)

    # --- linear algebra and convolutions ----------------------------------------------------

    def op_fully_connected(self, op: Any, ins: list[int], outs: list[int]) -> None:
        o = self.opts(op, "FullyConnectedOptions")
        weights = self.const_required(ins[1], "FULLY_CONNECTED weights")  # [out, in]
        x = self.name(ins[0])
        if not o.KeepNumDims():  # TFLite flattens the input to [-1, in]
            x = self.node("Reshape", [x, self.init(np.asarray([-1, weights.shape[1]], np.int64))])
        y = self.node("MatMul", [x, self.init(np.ascontiguousarray(weights.T), "w")])
        if len(ins) > 2 and ins[2] >= 0:
            y = self.node("Add", [y, self.name(ins[2])])
        self.act(y, o.FusedActivationFunction(), self.name(outs[0]))

    def op_batch_matmul(self, op: Any, ins: list[int], outs: list[int]) -> None:
        o = self.opts(op, "BatchMatMulOptions")
        args = []
        for idx, adjoint in zip(ins[:2], (o.AdjX(), o.AdjY()), strict=True):
            x = self.name(idx)
            if adjoint:
                rank = len(self.signature(idx))
                x = self.node("Transpose", [x], perm=[*range(rank - 2), rank - 1, rank - 2])
            args.append(x)
        self.node("MatMul", args, self.name(outs[0]))

    def _nchw(self, x: str) -> str:
        return self.node("Transpose", [x], perm=[0, 3, 1, 2])

    def op_conv_2d(self, op: Any, ins: list[int], outs: list[int]) -> None:
        o = self.opts(op, "Conv2DOptions")
        weights = self.const_required(ins[1], "CONV_2D weights")  # [O, KH, KW, I]
        channels = self.signature(ins[0])[-1]
        if channels <= 0:  # unknown in the signature: a plain (ungrouped) convolution
            channels = int(weights.shape[3])
        args = [self._nchw(self.name(ins[0])), self.init(np.ascontiguousarray(weights.transpose(0, 3, 1, 2)), "w")]
        if len(ins) > 2 and ins[2] >= 0:
            args.append(self.name(ins[2]))
        y = self.node("Conv", args, kernel_shape=list(weights.shape[1:3]),
                      strides=[o.StrideH(), o.StrideW()], dilations=[o.DilationHFactor(), o.DilationWFactor()],
                      group=channels // weights.shape[3],
                      auto_pad="SAME_UPPER" if o.Padding() == 0 else "VALID")  # TF's SAME pads the end more
        y = self.node("Transpose", [y], perm=[0, 2, 3, 1])
        self.act(y, o.FusedActivationFunction(), self.name(outs[0]))

    def op_transpose_conv(self, op: Any, ins: list[int], outs: list[int]) -> None:
        """TFLite TRANSPOSE_CONV (output_shape, weights [O, KH, KW, I], x[, bias]).

        The graphs ask for output = input * stride (what SAME padding gives); the crop of a
        SAME transposed convolution is then k - stride per dimension, the smaller half first."""
        o = self.opts(op, "TransposeConvOptions")
        weights = self.const_required(ins[1], "TRANSPOSE_CONV weights")
        kernel, strides = list(weights.shape[1:3]), [o.StrideH(), o.StrideW()]
        if o.Padding() == 0:
            total = [max(k - s, 0) for k, s in zip(kernel, strides, strict=True)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            pads = [0, 0, 0, 0]
        args = [self._nchw(self.name(ins[2])), self.init(np.ascontiguousarray(weights.transpose(3, 0, 1, 2)), "w")]
        if len(ins) > 3 and ins[3] >= 0:
            args.append(self.name(ins[3]))
        y = self.node("ConvTranspose", args, kernel_shape=kernel, strides=strides, pads=pads)
        y = self.node("Transpose", [y], perm=[0, 2, 3, 1])
        code = o.FusedActivationFunction() if hasattr(o, "FusedActivationFunction") else 0
        self.act(y, code, self.name(outs[0]))

    # --- dilated convolutions: TF's space-to-batch pair -------------------------------------

    def _dims(self, shape: str, start: int, end: int | None = None) -> str:
        ends = [end] if end is not None else [_I64_MAX]
        return self.node("Slice", [shape, self.init(np.asarray([start], np.int64)), self.init(np.asarray(ends, np.int64))])

    def op_space_to_batch_nd(self, op: Any, ins: list[int], outs: list[int]) -> None:
        block = self.const_required(ins[1], "SPACE_TO_BATCH_ND block").astype(np.int64).reshape(-1)
        m, rank = len(block), len(self.signature(ins[0]))
        pads = self.i64(ins[2])  # [m, 2]
        zeros = self.init(np.zeros(1, np.int64))
        rest = self.init(np.zeros(rank - 1 - m, np.int64))
        begins = self.node("Reshape", [self.node("Slice", [pads, self.init(np.asarray([0], np.int64)), self.init(np.asarray([1], np.int64)), self.init(np.asarray([1], np.int64))]), self.init(np.asarray([-1], np.int64))])
        ends = self.node("Reshape", [self.node("Slice", [pads, self.init(np.asarray([1], np.int64)), self.init(np.asarray([2], np.int64)), self.init(np.asarray([1], np.int64))]), self.init(np.asarray([-1], np.int64))])
        full = self.node("Concat", [zeros, begins, rest, zeros, ends, rest], axis=0)
        padded = self.node("Pad", [self.name(ins[0]), full])
        shape = self.node("Shape", [padded])
        pieces = [self._dims(shape, 0, 1)]
        for i, b in enumerate(block.tolist()):
            bb = self.init(np.asarray([b], np.int64))
            pieces += [self.node("Div", [self._dims(shape, 1 + i, 2 + i), bb]), bb]
        pieces.append(self._dims(shape, 1 + m))
        split = self.node("Reshape", [padded, self.node("Concat", pieces, axis=0)])
        perm = [2 + 2 * i for i in range(m)] + [0] + [1 + 2 * i for i in range(m)] + list(range(1 + 2 * m, rank + m))
        moved = self.node("Transpose", [split], perm=perm)
        batch = self.node("Mul", [self._dims(shape, 0, 1), self.init(np.asarray([int(np.prod(block))], np.int64))])
        final = [batch] + [pieces[1 + 2 * i] for i in range(m)] + [pieces[-1]]
        self.node("Reshape", [moved, self.node("Concat", final, axis=0)], self.name(outs[0]))

    def op_batch_to_space_nd(self, op: Any, ins: list[int], outs: list[int]) -> None:
        block = self.const_required(ins[1], "BATCH_TO_SPACE_ND block").astype(np.int64).reshape(-1)
        m, rank = len(block), len(self.signature(ins[0]))
        x = self.name(ins[0])
        shape = self.node("Shape", [x])
        batch = self.node("Div", [self._dims(shape, 0, 1), self.init(np.asarray([int(np.prod(block))], np.int64))])
        split = self.node("Reshape", [x, self.node("Concat", [self.init(block), batch, self._dims(shape, 1)], axis=0)])
        perm = [m]
        for i in range(m):
            perm += [m + 1 + i, i]
        perm += list(range(2 * m + 1, rank + m))
        moved = self.node("Transpose", [split], perm=perm)
        joined = [batch] + [self.node("Mul", [self._dims(shape, 1 + i, 2 + i), self.init(block[i:i + 1])])
                            for i in range(m)] + [self._dims(shape, 1 + m)]
        spaced = self.node("Reshape", [moved, self.node("Concat", joined, axis=0)])
        crops = self.i64(ins[2])  # [m, 2]
        one = self.init(np.asarray([1], np.int64))
        starts = self.node("Reshape", [self.node("Slice", [crops, self.init(np.asarray([0], np.int64)), one, one]), self.init(np.asarray([-1], np.int64))])
        cut = self.node("Reshape", [self.node("Slice", [crops, one, self.init(np.asarray([2], np.int64)), one]), self.init(np.asarray([-1], np.int64))])
        sizes = self.node("Slice", [self.node("Shape", [spaced]), one, self.init(np.asarray([1 + m], np.int64))])
        self.node("Slice", [spaced, starts, self.node("Sub", [sizes, cut]), self.init(np.arange(1, 1 + m, dtype=np.int64))],
                  self.name(outs[0]))
