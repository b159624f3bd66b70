"""ONNX's own operator test cases (`onnx.backend.test.case.node`), every graph input fed at run time.

`run_cases()` loads each case whose nodes are all of supported op types, runs it on
the given executors and compares values and dtypes with the case's expected outputs.
`python tests/onnx/node_cases.py` prints the table: cases, passes, and each refusal's reason.
"""

from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Outcome:
    cases: int = 0
    passed: int = 0
    refused: list = field(default_factory=list)  # (case, reason): a clean UnsupportedOnnxError
    wrong: list = field(default_factory=list)  # (case, what): values, dtype or an error of another type
    by_op: dict = field(default_factory=lambda: collections.defaultdict(lambda: [0, 0]))

    @property
    def rate(self) -> float:
        return self.passed / self.cases if self.cases else 0.0

    def report(self) -> str:
        lines = [f"ONNX node test cases fed at run time: {self.passed} of {self.cases} pass ({self.rate:.1%})",
                 f"{'op':<22}{'cases':>6}{'passed':>8}"]
        lines += [f"{op:<22}{n:>6}{p:>8}" for op, (n, p) in sorted(self.by_op.items())]
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


def run_cases(cases, executors=("sequential", "actor")) -> Outcome:
    from vertexflow import onnx as vf_onnx

    supported = set(vf_onnx.SUPPORTED_OPS)
    outcome = Outcome()
    for case in cases:
        types = {n.op_type for n in case.model.graph.node}
        if not types <= supported:
            continue
        op = (sorted(types - {"Constant"}) or ["Constant"])[0]
        outcome.cases += 1
        outcome.by_op[op][0] += 1
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
                        value = np.asarray(value)
                        if value.shape != want.shape or not np.allclose(
                                value.astype(np.float64) if value.dtype.kind == "V" else value,
                                want.astype(np.float64) if want.dtype.kind == "V" else want,
                                rtol=case.rtol, atol=case.atol, equal_nan=True):
                            outcome.wrong.append((case.name, f"values differ on {executor}"))
                            ok = False
                        elif value.dtype != want.dtype:
                            outcome.wrong.append((case.name, f"dtype {value.dtype}, expected {want.dtype}"))
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
    return outcome


if __name__ == "__main__":
    print(run_cases(collect()).report())
