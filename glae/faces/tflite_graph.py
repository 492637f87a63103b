"""Run a small TensorFlow Lite convolutional graph in PyTorch: weights and ops read as data.

BlazeFace (``glae.faces.blazeface``) ships only as ``.tflite`` files. This module reads
such a file with the ``tflite`` schema package (flatbuffer accessors, pure Python: reading
runs no code from the file) and replays its operators in order on NCHW tensors. It knows
the ten operator kinds of MediaPipe's face detectors and refuses any other by name.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

TFLITE_PIP = "pip install 'glae[blazeface]'"
# tflite.TensorType codes of the constant buffers these graphs hold.
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}
# tflite.ActivationFunctionType codes fused into an operator.
_ACTIVATIONS: dict[int, Callable[[Tensor], Tensor]] = {0: lambda x: x, 1: F.relu, 3: F.relu6}
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


class TFLiteGraphError(ValueError):
    """The file is not a TFLite graph this reader can replay; the message says what is missing."""


def _schema() -> Any:
    try:
        import tflite
    except ImportError as error:
        raise TFLiteGraphError(f"reading .tflite files needs the tflite schema package; run: {TFLITE_PIP}") from error
    return tflite


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one axis: the odd pixel goes after, unlike PyTorch's symmetric padding."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@dataclass
class _Step:
    """One operator: its kind, the tensor ids it reads and writes, and its settings."""

    kind: str
    inputs: list[int]
    output: int
    options: dict[str, Any]


class TFLiteGraph(nn.Module):
    """A TFLite graph of convolutions as a PyTorch module: ``[B, 3, H, W]`` -> its outputs, in file order.

    The input is NCHW where the file says NHWC; 4-D tensors stay NCHW inside and go back to
    NHWC only where the graph reshapes them. Float16 weights are widened to float32 once, at
    load. The graph also runs on input sizes other than the file's: convolutions pad by
    TensorFlow's SAME rule for the size that comes in, and resizes scale by the file's factor.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        tflite = _schema()
        data = Path(path).read_bytes()
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise TFLiteGraphError(f"{path} is not a TensorFlow Lite file (no TFL3 identifier)")
        try:
            self._read(tflite, tflite.Model.GetRootAsModel(data, 0), path)
        except TFLiteGraphError:
            raise
        except (IndexError, KeyError, ValueError, TypeError, struct.error) as error:
            raise TFLiteGraphError(f"{path} is a damaged TensorFlow Lite file: {type(error).__name__}: {error}") from error
        # Registered as buffers so that .to(device) moves them.
        for key, constant in self._constants.items():
            self.register_buffer(f"t{key}", constant, persistent=False)

    def _read(self, tflite: Any, model: Any, path: str | Path) -> None:
        """The graph's operators as steps and its constants as float32 tensors."""
        if model.SubgraphsLength() != 1:
            raise TFLiteGraphError(f"{path} has {model.SubgraphsLength()} subgraphs; only single-graph files are supported")
        graph = model.Subgraphs(0)
        names = {value: key for key, value in vars(tflite.BuiltinOperator).items() if not key.startswith("_")}
        self._constants: dict[int, Tensor] = {}
        self._input = int(graph.Inputs(0))
        self._outputs = [int(graph.Outputs(k)) for k in range(graph.OutputsLength())]
        self._steps: list[_Step] = []
        for index in range(graph.OperatorsLength()):
            op = graph.Operators(index)
            code = model.OperatorCodes(op.OpcodeIndex())
            kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "unknown")
            inputs = [int(t) for t in op.InputsAsNumpy()]
            output = int(op.Outputs(0))
            if kind == "DEQUANTIZE":
                self._constants[output] = torch.from_numpy(self._buffer(model, graph, inputs[0]).astype(np.float32))
                continue
            self._steps.append(_Step(kind, inputs, output, self._options(tflite, kind, op, graph, inputs)))
        computed = {self._input} | {step.output for step in self._steps}
        for step in self._steps:
            for tensor in step.inputs[1:]:
                if tensor >= 0 and tensor not in self._constants and tensor not in computed:
                    self._constants[tensor] = torch.from_numpy(self._buffer(model, graph, tensor).astype(np.float32))
        self._prepare_weights()
        uses: dict[int, int] = {}
        for step in self._steps:
            for tensor in step.inputs:
                uses[tensor] = uses.get(tensor, 0) + 1
        # Intermediate tensors read by one operator only: ADD and RELU may overwrite them.
        self._read_once = {step.output for step in self._steps if uses.get(step.output) == 1} - set(self._outputs)

    @staticmethod
    def _buffer(model: Any, graph: Any, tensor_id: int) -> np.ndarray:
        tensor = graph.Tensors(tensor_id)
        raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(raw, int) or tensor.Type() not in _DTYPES:
            raise TFLiteGraphError(f"tensor {tensor.Name().decode()!r} has no constant data of a known type")
        shape = [int(s) for s in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
        return np.frombuffer(raw.tobytes(), dtype=_DTYPES[tensor.Type()]).reshape(shape)

    @staticmethod
    def _options(tflite: Any, kind: str, op: Any, graph: Any, inputs: list[int]) -> dict[str, Any]:
        """The settings of one operator, as plain values."""

        def table(cls: Any) -> Any:
            options = cls()
            raw = op.BuiltinOptions()
            options.Init(raw.Bytes, raw.Pos)
            return options

        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            cls = tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions
            o = table(cls)
            if (o.DilationHFactor(), o.DilationWFactor()) != (1, 1):
                raise TFLiteGraphError(f"{kind} with dilation is not supported")
            return {"same": o.Padding() == 0, "stride": (o.StrideH(), o.StrideW()), "activation": o.FusedActivationFunction()}
        if kind == "MAX_POOL_2D":
            o = table(tflite.Pool2DOptions)
            return {
                "same": o.Padding() == 0,
                "stride": (o.StrideH(), o.StrideW()),
                "kernel": (o.FilterHeight(), o.FilterWidth()),
                "activation": o.FusedActivationFunction(),
            }
        if kind == "ADD":
            return {"activation": table(tflite.AddOptions).FusedActivationFunction()}
        if kind == "CONCATENATION":
            o = table(tflite.ConcatenationOptions)
            return {"axis": o.Axis(), "activation": o.FusedActivationFunction()}
        if kind == "RESIZE_BILINEAR":
            o = table(tflite.ResizeBilinearOptions)
            source, target = graph.Tensors(inputs[0]).ShapeAsNumpy(), graph.Tensors(op.Outputs(0)).ShapeAsNumpy()
            if target[1] % source[1] or target[2] % source[2]:
                raise TFLiteGraphError("only RESIZE_BILINEAR by a whole factor is supported")
            # A factor, not a size: the graph then runs on inputs of other sizes.
            factor = (int(target[1] // source[1]), int(target[2] // source[2]))
            return {"align_corners": bool(o.AlignCorners()), "half_pixel": bool(o.HalfPixelCenters()), "factor": factor}
        if kind == "RESHAPE":
            source, target = graph.Tensors(inputs[0]), graph.Tensors(op.Outputs(0))
            if source.ShapeLength() != 4 or target.ShapeLength() != 3:
                raise TFLiteGraphError("only RESHAPE of a feature map into [batch, cells, values] is supported")
            return {"values": int(target.ShapeAsNumpy()[-1])}
        if kind in ("RELU", "PAD"):
            return {}
        raise TFLiteGraphError(f"operator {kind} is not supported by this reader")

    def _prepare_weights(self) -> None:
        """NHWC-ordered kernels to PyTorch's layouts, and each operator's activation checked."""
        for step in self._steps:
            if "activation" in step.options and step.options["activation"] not in _ACTIVATIONS:
                raise TFLiteGraphError(f"{step.kind} with fused activation code {step.options['activation']} is not supported")
            if step.kind == "CONV_2D":  # [O, kh, kw, I] -> [O, I, kh, kw]
                self._constants[step.inputs[1]] = self._constants[step.inputs[1]].permute(0, 3, 1, 2).contiguous()
            elif step.kind == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C] -> [C, 1, kh, kw]
                self._constants[step.inputs[1]] = self._constants[step.inputs[1]].permute(3, 0, 1, 2).contiguous()
            elif step.kind == "PAD":  # NHWC [[before, after]] x 4 -> F.pad's (W, H, C) order
                pads = self._constants[step.inputs[1]].long()
                if pads[0].any():
                    raise TFLiteGraphError("PAD along the batch axis is not supported")
                step.options["pad"] = [int(v) for v in torch.stack([pads[2], pads[1], pads[3]]).flatten()]

    def _constant(self, tensor_id: int) -> Tensor:
        return getattr(self, f"t{tensor_id}")

    def forward(self, x: Tensor) -> list[Tensor]:
        values: dict[int, Tensor] = {self._input: x}
        for step in self._steps:
            values[step.output] = self._run(step, values)
        return [values[k] for k in self._outputs]

    def _run(self, step: _Step, values: dict[int, Tensor]) -> Tensor:
        x = values[step.inputs[0]]
        options = step.options
        if step.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weight = self._constant(step.inputs[1])
            bias = self._constant(step.inputs[2]) if len(step.inputs) > 2 and step.inputs[2] >= 0 else None
            if options["same"]:
                top, bottom = _same_padding(x.shape[2], weight.shape[2], options["stride"][0])
                left, right = _same_padding(x.shape[3], weight.shape[3], options["stride"][1])
                if (top, left) == (bottom, right):
                    padding: tuple[int, int] = (top, left)
                else:
                    x, padding = F.pad(x, (left, right, top, bottom)), (0, 0)
            else:
                padding = (0, 0)
            groups = x.shape[1] if step.kind == "DEPTHWISE_CONV_2D" else 1
            return _ACTIVATIONS[options["activation"]](F.conv2d(x, weight, bias, options["stride"], padding, 1, groups))
        if step.kind == "MAX_POOL_2D":
            kernel, stride = options["kernel"], options["stride"]
            if options["same"]:
                top, bottom = _same_padding(x.shape[2], kernel[0], stride[0])
                left, right = _same_padding(x.shape[3], kernel[1], stride[1])
                x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
            return _ACTIVATIONS[options["activation"]](F.max_pool2d(x, kernel, stride))
        if step.kind == "ADD":
            other = values[step.inputs[1]] if step.inputs[1] in values else self._constant(step.inputs[1])
            if step.inputs[1] in self._read_once and other.shape == x.shape:
                total = other.add_(x)
            elif step.inputs[0] in self._read_once and other.shape == x.shape:
                total = x.add_(other)
            else:
                total = x + other
            return _ACTIVATIONS[options["activation"]](total)
        if step.kind == "RELU":
            return F.relu(x, inplace=step.inputs[0] in self._read_once)
        if step.kind == "PAD":
            return F.pad(x, options["pad"])
        if step.kind == "RESIZE_BILINEAR":
            return self._resize(x, options)
        if step.kind == "RESHAPE":  # [B, C, H, W] -> [B, H * W * C / values, values] in NHWC order
            return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, options["values"])
        if step.kind == "CONCATENATION":
            parts = [values[k] for k in step.inputs]
            axis = options["axis"] % parts[0].dim()
            if parts[0].dim() == 4:
                axis = _NHWC_TO_NCHW_AXIS[axis]
            return _ACTIVATIONS[options["activation"]](torch.cat(parts, axis))
        raise TFLiteGraphError(f"operator {step.kind} is not supported by this reader")

    @staticmethod
    def _resize(x: Tensor, options: dict[str, Any]) -> Tensor:
        """TFLite's RESIZE_BILINEAR by whole factors, with PyTorch's own bilinear kernel."""
        factor_h, factor_w = options["factor"]
        height, width = x.shape[-2:]
        if options["align_corners"]:
            return F.interpolate(x, size=(height * factor_h, width * factor_w), mode="bilinear", align_corners=True)
        if options["half_pixel"]:
            return F.interpolate(x, scale_factor=(factor_h, factor_w), mode="bilinear", align_corners=False)
        # TFLite's default samples output pixel i at input i / factor. That is PyTorch's corner
        # alignment on (n - 1) * factor + 1 pixels; the last factor - 1 repeat the edge.
        aligned = F.interpolate(x, size=((height - 1) * factor_h + 1, (width - 1) * factor_w + 1), mode="bilinear", align_corners=True)
        return F.pad(aligned, (0, factor_w - 1, 0, factor_h - 1), mode="replicate")
