"""The neural-network kit: layers, optimizers against torch.optim, fit, model files, data."""

import gzip
import io

import numpy as np
import pytest

import vertexflow as vf

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def mlp(dtype="float64", sizes=(8, 16, 12, 4), seed=0):
    g = vf.Graph("mlp")
    x = g.input("x", shape=(None, sizes[0]), dtype=dtype)
    y = g.input("y", shape=(None,), dtype="int64")
    layers = [vf.nn.Linear(a, b, "relu" if i < len(sizes) - 2 else None, seed=seed + i, name=f"fc{i}")
              for i, (a, b) in enumerate(zip(sizes, sizes[1:]))]
    model = vf.nn.Sequential(*layers)
    logits = model(x)
    return g, x, y, model, logits, vf.cross_entropy(logits, y, name="loss")


# -- layers -------------------------------------------------------------------------
def test_layers_build_named_params_and_shapes():
    g, x, y, model, logits, loss = mlp()
    assert logits.shape == (None, 4)
    assert [p.name for p in model.parameters()] == ["fc0.w", "fc0.b", "fc1.w", "fc1.b", "fc2.w", "fc2.b"]
    assert g["fc0.w"].shape == (8, 16) and g["fc0.b"].shape == (16,)
    with pytest.raises(vf.ShapeError, match="expects 8 features"):
        vf.nn.Linear(8, 3)(g.input("z", shape=(None, 5), dtype="float64"))


def test_conv_pool_flatten_stack():
    g = vf.Graph()
    x = g.input("x", shape=(None, 1, 8, 8))
    net = vf.nn.Sequential(vf.nn.Conv2d(1, 4, 3, padding=1, activation="relu"), vf.nn.MaxPool2d(2),
                           vf.nn.Flatten(), vf.nn.Linear(64, 10))
    out = net(x)
    assert out.shape == (None, 10)
    value = vf.SequentialExecutor(g).run({x: np.ones((2, 1, 8, 8), "float32")}, out)
    assert value.shape == (2, 10)


def test_dropout_masks_in_training_and_not_in_evaluation():
    g = vf.Graph()
    x = g.input("x", shape=(1000,), dtype="float64")
    drop = vf.nn.Dropout(0.25, seed=3)
    net = vf.nn.Sequential(drop)
    out = net(x)
    ex = vf.SequentialExecutor(g)
    first, second = ex.run({x: np.ones(1000)}, out), ex.run({x: np.ones(1000)}, out)
    assert set(np.unique(first)) == {0.0, 1 / 0.75}
    assert 0.15 < (first == 0).mean() < 0.35
    assert not np.array_equal(first, second)  # a fresh mask every run
    net.eval()
    np.testing.assert_array_equal(ex.run({x: np.ones(1000)}, out), np.ones(1000))
    net.train()
    _, grads = ex.backward({x: np.arange(1000.0)}, vf.sum(out), [x])
    assert set(np.unique(grads[x])) <= {0.0, 1 / 0.75}


def test_dropout_masks_are_the_same_on_both_executors():
    def run(cls):
        g = vf.Graph()
        x = g.input("x", shape=(50,), dtype="float64")
        out = vf.nn.Dropout(0.5, seed=11)(x)
        with cls(g) as ex:
            return [ex.run({x: np.ones(50)}, out) for _ in range(3)]

    for a, b in zip(run(vf.SequentialExecutor), run(vf.ActorExecutor)):
        np.testing.assert_array_equal(a, b)


def test_binary_cross_entropy_matches_the_formula():
    g = vf.Graph()
    p = g.input("p", shape=(4,), dtype="float64")
    t = g.input("t", shape=(4,), dtype="float64")
    pv, tv = np.array([0.1, 0.9, 0.5, 1.0]), np.array([0.0, 1.0, 1.0, 1.0])
    value = vf.SequentialExecutor(g).run({p: pv, t: tv}, vf.nn.binary_cross_entropy(p, t))
    clipped = np.clip(pv, 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(value, -np.mean(tv * np.log(clipped) + (1 - tv) * np.log(1 - clipped)))


# -- optimizers against torch.optim ------------------------------------------------------
OPTIMIZERS = {
    "sgd": (lambda ps: vf.optim.SGD(ps, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
    "sgd_momentum_wd": (lambda ps: vf.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
                        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "sgd_nesterov": (lambda ps: vf.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
                     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True)),
    "rmsprop": (lambda ps: vf.optim.RMSProp(ps, lr=1e-3), lambda ps: torch.optim.RMSprop(ps, lr=1e-3)),
    "adam": (lambda ps: vf.optim.Adam(ps, lr=1e-3), lambda ps: torch.optim.Adam(ps, lr=1e-3)),
    "adam_wd": (lambda ps: vf.optim.Adam(ps, lr=1e-3, weight_decay=1e-2),
                lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=1e-2)),
    "adagrad": (lambda ps: vf.optim.AdaGrad(ps, lr=0.05), lambda ps: torch.optim.Adagrad(ps, lr=0.05)),
}


@needs_torch
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("executor", ["sequential", "actor"])
def test_training_matches_torch_step_for_step(name, executor):
    make_vf, make_torch = OPTIMIZERS[name]
    g, x, y, model, logits, loss = mlp()
    params = model.parameters()
    torch_params = [torch.tensor(p.value.T.copy() if p.ndim == 2 else p.value.copy(), requires_grad=True)
                    for p in params]
    opt, topt = make_vf(params), make_torch(torch_params)
    rng = np.random.default_rng(5)
    ex = vf.SequentialExecutor(g) if executor == "sequential" else vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network")
    ours, theirs = [], []
    try:
        for _ in range(100):
            xb, yb = rng.normal(size=(6, 8)), rng.integers(0, 4, 6)
            value, grads = ex.backward({x: xb, y: yb}, loss)
            opt.step(grads)
            ours.append(float(value))
            h = torch.tensor(xb)
            for i in range(0, len(torch_params), 2):
                h = torch.nn.functional.linear(h, torch_params[i], torch_params[i + 1])
                if i + 2 < len(torch_params):
                    h = torch.relu(h)
            tloss = torch.nn.functional.cross_entropy(h, torch.tensor(yb))
            topt.zero_grad()
            tloss.backward()
            topt.step()
            theirs.append(tloss.item())
    finally:
        ex.close()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    for p, t in zip(params, torch_params):
        want = t.detach().numpy()
        np.testing.assert_allclose(p.value, want.T if p.ndim == 2 else want, rtol=1e-6, atol=1e-9)


@needs_torch
def test_gradient_clipping_matches_torch():
    g, x, y, model, logits, loss = mlp()
    params = model.parameters()
    xb, yb = np.random.default_rng(1).normal(size=(6, 8)) * 50, np.array([0, 1, 2, 3, 0, 1])
    _, grads = vf.SequentialExecutor(g).backward({x: xb, y: yb}, loss)
    before = {p: p.value.copy() for p in params}
    vf.optim.SGD(params, lr=1.0, clip_norm=0.5).step(grads)
    tgrads = [torch.tensor(grads[p]) for p in params]
    for t in tgrads:
        t.grad = t.clone()
    torch.nn.utils.clip_grad_norm_(tgrads, 0.5)
    for p, t in zip(params, tgrads):
        np.testing.assert_allclose(before[p] - p.value, t.grad.numpy(), rtol=1e-6, atol=1e-12)


def test_optimizer_refuses_a_missing_gradient():
    g, x, y, model, logits, loss = mlp()
    opt = vf.optim.Adam(model.parameters())
    with pytest.raises(vf.GraphError, match="no gradient for param 'fc0.w'"):
        opt.step({})


# -- fit ---------------------------------------------------------------------------------
@pytest.mark.parametrize("executor", ["sequential", "actor"])
def test_fit_learns_the_digits(executor):
    pytest.importorskip("sklearn")
    xs, ys = vf.data.load_digits()
    xtr, ytr, xte, yte = vf.data.train_test_split(xs, ys, test=0.2, seed=0)
    g = vf.Graph()
    x = g.input("x", shape=(None, 64))
    y = g.input("y", shape=(None,), dtype="int64")
    model = vf.nn.Sequential(vf.nn.Linear(64, 64, "relu", seed=0), vf.nn.Linear(64, 10, seed=1))
    logits = model(x)
    opt = vf.optim.RMSProp(model.parameters(), lr=3e-3)
    history = vf.nn.fit(vf.cross_entropy(logits, y), opt, x, y, (xtr, ytr), epochs=3, batch_size=64,
                        validation=(xte, yte), output=logits, executor=executor, progress=False)
    assert history.loss[-1] < history.loss[0]
    assert history.val_accuracy[-1] >= 0.9  # the full run (examples/mlp_digits.py) reaches >= 0.97


# -- model files ---------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".npz", ".safetensors"])
def test_save_load_round_trip_is_bitwise(tmp_path, ext):
    if ext == ".safetensors":
        pytest.importorskip("safetensors")
    g, x, y, model, logits, loss = mlp()
    params = model.parameters()
    opt = vf.optim.Adam(params)
    _, grads = vf.SequentialExecutor(g).backward({x: np.ones((2, 8)), y: np.array([0, 1])}, loss)
    opt.step(grads)
    path = vf.nn.save(str(tmp_path / f"model{ext}"), params, opt)
    saved = {p: p.value.copy() for p in params}
    state = opt.state_dict()
    for p in params:
        p.value = np.zeros(p.shape)
    opt2 = vf.optim.Adam(params)
    vf.nn.load(path, params, opt2)
    for p in params:
        np.testing.assert_array_equal(p.value, saved[p])
    assert opt2.steps == 1
    for key, value in state.items():
        np.testing.assert_array_equal(opt2.state_dict()[key], value)


@pytest.mark.parametrize("ext", [".npz", ".safetensors"])
def test_bad_model_files_raise_and_change_nothing(tmp_path, ext):
    if ext == ".safetensors":
        pytest.importorskip("safetensors")
    g, x, y, model, logits, loss = mlp()
    params = model.parameters()
    good = vf.nn.save(str(tmp_path / f"good{ext}"), params)
    data = (tmp_path / f"good{ext}").read_bytes()
    (tmp_path / f"corrupt{ext}").write_bytes(b"\x07garbage" * 40)
    (tmp_path / f"truncated{ext}").write_bytes(data[: len(data) // 2])
    other = mlp(sizes=(8, 16, 12, 5))[3]
    vf.nn.save(str(tmp_path / f"mismatch{ext}"), other.parameters())
    before = {p: p.value.copy() for p in params}
    for case, words in [("corrupt", "not a readable"), ("truncated", "not a readable"),
                        ("mismatch", r"param 'fc2.w' has shape \(12, 5\) in the file, \(12, 4\) in the model")]:
        with pytest.raises(vf.nn.ModelFileError, match=words):
            vf.nn.load(str(tmp_path / f"{case}{ext}"), params)
        for p in params:
            np.testing.assert_array_equal(p.value, before[p])
    with pytest.raises(vf.nn.ModelFileError, match="no optimizer state"):
        vf.nn.load(good, params, vf.optim.Adam(params))
    with pytest.raises(vf.nn.ModelFileError, match="unknown model file type '.pkl'"):
        vf.nn.load(str(tmp_path / "model.pkl"), params)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    g, x, y, model, logits, loss = mlp()
    path = tmp_path / "evil.npz"
    np.savez(path, **{"param/fc0.w": np.array([object()], dtype=object)})
    with pytest.raises(vf.nn.ModelFileError, match="not a readable"):
        vf.nn.load(str(path), model.parameters())


def _hostile_state(opt, **changes):
    state = opt.state_dict()
    state.update(changes)
    return state


@pytest.mark.parametrize("steps, words", [
    (np.array([1, 2]), "'steps' must be one integer >= 0, got int64 of shape \\(2,\\)"),
    (np.array(np.nan), "'steps' must be one integer >= 0, got float64"),
    (np.array("three"), "'steps' must be one integer >= 0, got <U5"),
    (np.array(-1), "'steps' must be one integer >= 0"),
])
def test_bad_optimizer_entries_are_refused_before_anything_is_assigned(tmp_path, steps, words):
    g, x, y, model, logits, loss = mlp()
    params = model.parameters()
    opt = vf.optim.Adam(params)
    _, grads = vf.SequentialExecutor(g).backward({x: np.ones((2, 8)), y: np.array([0, 1])}, loss)
    opt.step(grads)
    arrays = {f"param/{p.name}": p.value + 1.0 for p in params}
    arrays.update({f"optim/{k}": v for k, v in _hostile_state(opt, steps=steps).items()})
    np.savez(tmp_path / "bad.npz", **arrays)
    before = {p: p.value.copy() for p in params}
    fresh = vf.optim.Adam(params)
    with pytest.raises(vf.nn.ModelFileError, match=words):
        vf.nn.load(str(tmp_path / "bad.npz"), params, fresh)
    for p in params:
        np.testing.assert_array_equal(p.value, before[p])
    assert fresh.steps == 0 and fresh.state_dict() == {"steps": 0}


def test_optimizer_slots_of_strings_or_nan_are_refused(tmp_path):
    g, x, y, model, logits, loss = mlp()
    params = model.parameters()
    opt = vf.optim.Adam(params)
    _, grads = vf.SequentialExecutor(g).backward({x: np.ones((2, 8)), y: np.array([0, 1])}, loss)
    opt.step(grads)
    key = next(k for k in opt.state_dict() if k != "steps")
    shape = opt.state_dict()[key].shape
    for bad, words in [(np.full(shape, np.nan), "NaN or infinite"), (np.full(shape, "x"), "not numbers")]:
        arrays = {f"param/{p.name}": p.value for p in params}
        arrays.update({f"optim/{k}": v for k, v in _hostile_state(opt, **{key: bad}).items()})
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(vf.nn.ModelFileError, match=f"optimizer state '{key}' holds .*{words}"):
            vf.nn.load(str(tmp_path / "bad.npz"), params, vf.optim.Adam(params))


def test_a_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    import tracemalloc
    import zipfile

    g, x, y, model, logits, loss = mlp()
    params = model.parameters()
    path = tmp_path / "huge.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**28,)}  # 1 GiB declared
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    member.write(b"\0" * 2**20)  # 1 MiB of data
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("param/fc0.w.npy", member.getvalue())
    tracemalloc.start()
    try:
        with pytest.raises(vf.nn.ModelFileError, match=r"declares shape \(268435456,\) of float32 "
                                                        r"\(1073741824 bytes\) but holds"):
            vf.nn.load(str(path), params)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


def test_a_fifo_is_refused_instead_of_blocking(tmp_path):
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    g, x, y, model, logits, loss = mlp()
    path = tmp_path / "pipe.npz"
    os.mkfifo(path)
    with pytest.raises(vf.nn.ModelFileError, match="not a regular file"):
        vf.nn.load(str(path), model.parameters())


# -- data ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["images.idx", "images.idx.gz"])
def test_idx_files_round_trip(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    path = vf.data.save_idx(str(tmp_path / name), images)
    if name.endswith(".gz"):
        assert gzip.decompress((tmp_path / name).read_bytes())[:4] == b"\x00\x00\x08\x03"
    np.testing.assert_array_equal(vf.data.load_idx(path), images)
    floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(vf.data.load_idx(vf.data.save_idx(str(tmp_path / "f.idx"), floats)), floats)


def test_bad_idx_files_are_refused(tmp_path):
    from vertexflow.data.loaders import DataFileError

    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataFileError, match="bad magic number"):
        vf.data.load_idx(str(tmp_path / "bad"))
    vf.data.save_idx(str(tmp_path / "good.idx"), np.zeros((4, 4), np.uint8))
    (tmp_path / "short.idx").write_bytes((tmp_path / "good.idx").read_bytes()[:-3])
    with pytest.raises(DataFileError, match=r"header says \(4, 4\)"):
        vf.data.load_idx(str(tmp_path / "short.idx"))


def test_batches_are_seeded_and_cover_everything():
    xs, ys = np.arange(10), np.arange(10) * 2
    first = list(vf.data.batches(xs, ys, 3, shuffle=True, seed=1))
    again = list(vf.data.batches(xs, ys, 3, shuffle=True, seed=1))
    assert [len(b[0]) for b in first] == [3, 3, 3, 1]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
    assert sorted(np.concatenate([b[0] for b in first])) == list(range(10))
    assert all(np.array_equal(b[1], b[0] * 2) for b in first)
