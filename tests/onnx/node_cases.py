"""ONNX's own operator test cases (`onnx.backend.test.case.node`), every graph input fed at run time.

`run_cases()` goes over every case the installed onnx package generates: it loads each one,
runs it on the given executors and compares values and dtypes with the case's expected
outputs (a case with an op vertexflow does not import counts as refused, as its load would
refuse it), and runs onnxruntime on the same model and data, so every figure stands beside
onnxruntime's. `python tests/onnx/node_cases.py` prints the table: cases, passes, onnxruntime's
passes, per op, and each refusal's reason.
"""

from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Outcome:
    """Over every node case the installed onnx generates: vertexflow's result beside onnxruntime's."""

    cases: int = 0
    passed: int = 0
    refused: list = field(default_factory=list)  # (case, reason): a clean refusal (UnsupportedOnnxError)
    wrong: list = field(default_factory=list)  # (case, what): values, dtype or an error of another type
    by_op: dict = field(default_factory=lambda: collections.defaultdict(lambda: [0, 0, 0]))  # cases, ours, ORT's
    onnxruntime_passed: int = 0
    both_passed: int = 0  # cases both pass

    @property
    def rate(self) -> float:
        """Cases vertexflow passes, over every case."""
        return self.passed / self.cases if self.cases else 0.0

    @property
    def share_of_onnxruntime(self) -> float:
        """Of the cases onnxruntime passes, the share vertexflow passes too."""
        return self.both_passed / self.onnxruntime_passed if self.onnxruntime_passed else 0.0

    def report(self) -> str:
        lines = [f"ONNX node test cases, every input fed at run time: vertexflow passes {self.passed} of {self.cases} "
                 f"({self.rate:.1%}); onnxruntime passes {self.onnxruntime_passed} ({self.onnxruntime_passed / max(self.cases, 1):.1%}); "
                 f"of onnxruntime's, vertexflow passes {self.both_passed} ({self.share_of_onnxruntime:.1%}); "
                 f"{len(self.refused)} refused cleanly, {len(self.wrong)} wrong",
                 f"{'op':<26}{'cases':>6}{'vertexflow':>12}{'onnxruntime':>13}"]
        lines += [f"{op:<26}{n:>6}{ours:>12}{theirs:>13}" for op, (n, ours, theirs) in sorted(self.by_op.items())]
        lines += [f"refused {name}: {why}" for name, why in self.refused]
        lines += [f"WRONG {name}: {why}" for name, why in self.wrong]
        return "\n".join(lines)


def collect():
    with warnings.catch_warnings():  # the case generators divide by zero on purpose
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        return collect_testcases()


def _array(value):
    from onnx import TensorProto, numpy_helper

    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)


def _matches(value, want, case) -> str | None:
    """Why `value` is not the expected output (None when it is), with the case's tolerances."""
    value = np.asarray(value)
    if value.shape != want.shape or not np.allclose(
            value.astype(np.float64) if value.dtype.kind == "V" else value,
            want.astype(np.float64) if want.dtype.kind == "V" else want,
            rtol=case.rtol, atol=case.atol, equal_nan=True):
        return "values differ"
    if value.dtype != want.dtype:
        return f"dtype {value.dtype}, expected {want.dtype}"
    return None


def onnxruntime_passes(case) -> bool:
    """Whether onnxruntime loads the case and gives its expected outputs (its result beside ours)."""
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        initial = {t.name for t in case.model.graph.initializer}
        names = [vi.name for vi in case.model.graph.input if vi.name not in initial]
        for inputs, outputs in case.data_sets:
            got = session.run(None, dict(zip(names, map(_array, inputs))))
            if any(_matches(v, w, case) for v, w in zip(got, map(_array, outputs))):
                return False
        return True
    except Exception:  # noqa: BLE001 - anything onnxruntime cannot do counts against it
        return False


def run_cases(cases, executors=("sequential", "actor")) -> Outcome:
    """Every case: vertexflow on each executor (a case with an op it does not import is refused, as its
    load would refuse it), and onnxruntime on the same model and data."""
    from vertexflow import onnx as vf_onnx

    supported = set(vf_onnx.SUPPORTED_OPS)
    outcome = Outcome()
    for case in cases:
        types = {n.op_type for n in case.model.graph.node}
        op = (sorted(types - {"Constant"}) or ["Constant"])[0]
        outcome.cases += 1
        outcome.by_op[op][0] += 1
        theirs = onnxruntime_passes(case)
        outcome.onnxruntime_passed += theirs
        outcome.by_op[op][2] += theirs
        if not types <= supported:
            outcome.refused.append((case.name, "op not supported: " + ", ".join(sorted(types - supported))))
            continue
        initial = {t.name for t in case.model.graph.initializer}
        names = [vi.name for vi in case.model.graph.input if vi.name not in initial]
        try:
            model = vf_onnx.load(case.model)
        except vf_onnx.UnsupportedOnnxError as exc:
            outcome.refused.append((case.name, "; ".join(why for _, _, why in exc.nodes)))
            continue
        ok = True
        try:
            for inputs, outputs in case.data_sets:
                feeds = dict(zip(names, map(_array, inputs)))
                for executor in executors:
                    got = model.run(feeds, executor=executor)
                    for value, want in zip(got, map(_array, outputs)):
                        why = _matches(value, want, case)
                        if why is not None:
                            outcome.wrong.append((case.name, f"{why} on {executor}"))
                            ok = False
        except vf_onnx.UnsupportedOnnxError as exc:  # refused when built for the fed values
            outcome.refused.append((case.name, "; ".join(why for _, _, why in exc.nodes)))
            ok = None
        except Exception as exc:  # noqa: BLE001 - any other error is a failure to report
            outcome.wrong.append((case.name, f"{type(exc).__name__}: {exc}"))
            ok = False
        finally:
            model.close()
        if ok:
            outcome.passed += 1
            outcome.by_op[op][1] += 1
            outcome.both_passed += theirs
    return outcome


if __name__ == "__main__":
    print(run_cases(collect()).report())
