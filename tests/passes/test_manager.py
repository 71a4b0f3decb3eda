"""The pass manager (levels, verification, history, statistics, dumps), sessions with opt_level,
and the CLI."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from graphnn.passes import PIPELINES, PassError, PassManager, register_pass

import graphnn as gn
from graphnn import cli, models


def test_levels_and_history() -> None:
    assert PIPELINES[0] == [] and PIPELINES[3][-1] == "plan_memory"
    graph, _ = models.inference_graph("mlp", batch=4)
    pm = PassManager(opt_level=2, variables_as_constants=True)
    pm.run(graph)
    assert [s.name for s in pm.history] == ["input", *PIPELINES[2]]
    kernels = [s.stats["kernels"] for s in pm.history]
    assert kernels[0] == 12 and kernels[-1] == 4  # 3 transposes, 3 matmuls, ... -> 4 kernels
    assert all(s.seconds >= 0 for s in pm.history)
    assert "fuse_epilogue" in pm.report()
    with pytest.raises(gn.GraphnnError, match="opt_level must be one of"):
        PassManager(opt_level=7)
    with pytest.raises(gn.GraphnnError, match="unknown pass 'nope'"):
        PassManager(["nope"])


def test_verifier_names_a_broken_pass() -> None:
    def break_types(graph: gn.Graph) -> gn.Graph:
        n = next(n for n in graph.nodes if n.op == "relu")
        graph.nodes[graph.nodes.index(n)] = gn.Node("relu", n.inputs, n.attrs, (1,), n.dtype,
                                                    n.name, n.scope, graph)
        return graph

    register_pass("break_types", break_types)
    graph, _ = models.inference_graph("mlp", batch=2)
    with pytest.raises(PassError, match="pass break_types failed: VerificationError"):
        PassManager(["break_types"], verify=True).run(graph)


def test_dumps_every_stage(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph, _ = models.inference_graph("digits-cnn", batch=2)
    PassManager(opt_level=2, dump_dir=str(tmp_path)).run(graph)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[:2] == ["00_input.dot", "00_input.txt"] and "08_fuse_epilogue.txt" in names
    text = (tmp_path / "08_fuse_epilogue.txt").read_text()
    assert text.startswith("# graph digits_cnn, after fuse_epilogue") and "fused" in text
    monkeypatch.setenv("GRAPHNN_DUMP", str(tmp_path / "env"))
    PassManager(opt_level=1).run(graph)
    assert (tmp_path / "env" / "04_dce.txt").exists()


def test_session_opt_level_and_dump_dir(tmp_path: pathlib.Path) -> None:
    graph, y = models.inference_graph("digits-cnn")
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    plain = gn.Session(graph, backend="reference").run(y, {"x": x})
    optimized = gn.Session(graph, "reference", opt_level=3, dump_dir=str(tmp_path)).run(y, {"x": x})
    np.testing.assert_allclose(optimized, plain, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "00_input.txt").read_text().count("f32[5,1,8,8]") == 1  # specialised
    custom = gn.Session(graph, "reference", passes=["fold_constants", "dce"]).run(y, {"x": x})
    np.testing.assert_allclose(custom, plain, rtol=1e-6)


def test_provenance_names_the_source_nodes_and_layer() -> None:
    graph, _ = models.inference_graph("mlp", batch=2)
    out = PassManager(opt_level=2, variables_as_constants=True).run(graph)
    fused = next(n for n in out.nodes if n.op == "fused")
    assert fused.scope == "1" and [o.split()[1] for o in fused.origin] == ["matmul", "add", "relu"]
    assert "# 1 <- %" in str(out)


def test_cli_dump_and_passes(capsys: pytest.CaptureFixture, tmp_path: pathlib.Path) -> None:
    assert cli.main(["dump", "mlp", "--batch", "2", "--freeze"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# mlp, O2, after dce") and out.count("= fused[") == 3
    assert cli.main(["dump", "digits-cnn", "--after", "simplify", "--opt-level", "1"]) == 0
    assert "after simplify" in capsys.readouterr().out
    assert cli.main(["dump", "mlp", "--emit", "llvm"]) == 2  # unknown batch size
    assert "needs static shapes" in capsys.readouterr().err
    assert cli.main(["dump", "mlp", "--batch", "2", "--freeze", "--emit", "kir"]) == 0
    assert "kernel k0_fused(" in capsys.readouterr().out
    assert cli.main(["dump", "mlp", "--batch", "2", "--emit", "llvm"]) == 0
    assert 'define void @"k0_' in capsys.readouterr().out
    assert cli.main(["dump", "digits-cnn", "--batch", "2", "--emit", "asm"]) == 0
    assert "ret" in capsys.readouterr().out
    assert cli.main(["dump", "mlp", "--emit", "opencl"]) == 2
    assert cli.main(["dump", "mlp", "--after", "fuse_epilogue", "--opt-level", "1"]) == 2
    assert cli.main(["passes"]) == 0
    assert "O2: fold_constants" in capsys.readouterr().out
    model = gn.nn.Sequential(gn.nn.Linear(3, 2))
    model.compile("sgd")
    model.fit(np.ones((4, 3), np.float32), np.zeros(4, np.int64), verbose=0)
    gn.save_model(tmp_path / "m.gnn", model)
    assert cli.main(["dump", str(tmp_path / "m.gnn"), "--opt-level", "0"]) == 0
    assert "graph model {" in capsys.readouterr().out


def test_decompose_attention_matches_the_op_and_keeps_unknown_causal_lengths() -> None:
    import numpy as np
    from graphnn.passes import PASSES

    import graphnn as gn

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)).astype(np.float32) for _ in range(3))
    mask = rng.random((5, 5)) > 0.3
    np.fill_diagonal(mask, True)
    for kw in ({}, {"is_causal": True}, {"attn_mask": mask}, {"scale": 0.3}):
        with gn.Graph() as g:
            ps = [gn.placeholder(a.shape, name=n) for n, a in zip("qkv", (q, k, v))]
            out = gn.scaled_dot_product_attention(*ps, **kw)
        g.outputs = (out,)
        new = PASSES["decompose_attention"](g)
        assert "scaled_dot_product_attention" not in {n.op for n in new.nodes}
        feeds = dict(zip("qkv", (q, k, v)))
        np.testing.assert_allclose(gn.Session(new, backend="reference").run(new.outputs[0], feeds),
                                   gn.Session(g, "reference").run(out, feeds), rtol=1e-5, atol=1e-6)
    with gn.Graph() as g:  # unknown lengths: a causal mask cannot be built, the op stays
        ps = [gn.placeholder((2, None, 4), name=n) for n in "qkv"]
        g.outputs = (gn.scaled_dot_product_attention(*ps, is_causal=True),)
    kept = PASSES["decompose_attention"](g)
    assert "scaled_dot_product_attention" in {n.op for n in kept.nodes}


@pytest.mark.parametrize(("equation", "shapes"), [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bkj->bik", [(2, 3, 4), (2, 5, 4)]),
    ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
    ("ik,kj->ji", [(3, 4), (4, 2)]),  # output transposed
    ("i,j->ij", [(3,), (4,)]),  # outer product: nothing summed
    ("i,i->", [(5,), (5,)]),  # full contraction
    ("abc,cd->d", [(2, 3, 4), (4, 5)]),  # a and b only in the first operand: summed out first
    ("ij,kj", [(2, 3), (4, 3)]),  # implicit output
])
def test_decompose_contractions_matches_einsum(equation: str, shapes: list) -> None:
    import numpy as np
    from graphnn.passes import PASSES

    import graphnn as gn

    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s) for s in shapes]
    with gn.Graph() as g:
        ps = [gn.placeholder(s, gn.float64, name=f"x{k}") for k, s in enumerate(shapes)]
        g.outputs = (gn.einsum(equation, *ps),)
    new = PASSES["decompose_contractions"](g)
    assert "einsum" not in {n.op for n in new.nodes}
    assert "matmul" in {n.op for n in new.nodes}
    feeds = {f"x{k}": a for k, a in enumerate(arrays)}
    got = gn.Session(new, backend="reference").run(new.outputs[0], feeds)
    np.testing.assert_allclose(got, np.einsum(equation, *arrays), rtol=1e-12, atol=1e-12)


def test_decompose_contractions_rewrites_gemm_and_keeps_diagonals() -> None:
    import numpy as np
    from graphnn.passes import PASSES

    import graphnn as gn

    rng = np.random.default_rng(2)
    a, b, c = rng.standard_normal((4, 3)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    with gn.Graph() as g:
        pa, pb, pc = (gn.placeholder(x.shape, gn.float64, name=n) for n, x in
                      zip("abc", (a, b, c)))
        g.outputs = (gn.gemm(pa, pb, pc, alpha=0.5, beta=2.0, trans_a=True, trans_b=True),
                     gn.einsum("ii,ij->j", gn.matmul(pa, gn.transpose(pa)), pa))
    new = PASSES["decompose_contractions"](g)
    ops = [n.op for n in new.nodes]
    assert "gemm" not in ops and ops.count("einsum") == 1  # the diagonal keeps its loop nest
    feeds = {"a": a, "b": b, "c": c}
    got = gn.Session(new, backend="reference").run(list(new.outputs), feeds)
    np.testing.assert_allclose(got[0], 0.5 * a.T @ b.T + 2.0 * c, rtol=1e-12)
    np.testing.assert_allclose(got[1], np.einsum("ii,ij->j", a @ a.T, a), rtol=1e-12)
