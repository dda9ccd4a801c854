"""Deployment: a checkpoint as an ONNX graph, checked against PyTorch in onnxruntime."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from darkknowledge.checkpoint import atomic_write_bytes, load_checkpoint
from darkknowledge.errors import DKError


def export_onnx(checkpoint: str | Path, out: Path, check: bool = True, side: int | None = None) -> dict[str, Any]:
    """Write the model of ``checkpoint`` to ``out`` (input ``x [batch, H, W]``, output ``logits``).

    The student is exported at T = 1, as deployed (paper section 2). With ``check``, onnxruntime runs
    the graph on random inputs and the largest absolute difference from PyTorch is reported.
    """
    if check:  # before anything is written: a failed check must not leave an unchecked file behind
        try:
            import onnxruntime as ort
        except ImportError:
            raise DKError("checking the export needs onnxruntime (pip install 'darkknowledge[export]'), "
                          "or pass --no-check") from None
    model, meta, _ = load_checkpoint(checkpoint)
    model.eval()
    n = int(meta["in_features"])
    side = side or int(round(n ** 0.5))
    if meta.get("in_shape") and len(meta["in_shape"]) == 3:  # colour images [C, H, W] (float, [0, 1])
        shape = tuple(int(d) for d in meta["in_shape"])
    else:
        shape = (side, side) if side * side == n else (n,)
    example = torch.rand(2, *shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (example,), buf, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    atomic_write_bytes(out, buf.getvalue())
    report: dict[str, Any] = {"onnx": str(out), "arch": meta["arch"], "input_shape": list(shape),
                              "bytes": out.stat().st_size}
    if check:
        x = torch.rand(64, *shape)
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        report["max_abs_diff"] = float(np.abs(got - want).max())
    return report
