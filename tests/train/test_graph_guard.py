"""trs's graph guard (train/methods/graph_guard.py): a Laplacian-regularised ridge cross-fitted on
the labelled videos; it drops the graph where the graph's neighbours disagree in score and keeps it
where they agree; it reads only labelled and unlabelled videos; in a run it narrows the gate's
options to those without the graph, which makes the run the one configured without the graph."""

from __future__ import annotations

import types

import numpy as np
import pytest

from aqa.errors import UserError
from train import build_config
from train.methods.gate import describe_outcome, gate_options
from train.methods.graph_guard import ALPHA, STRENGTH, _FoldSolver, describe_guard, graph_guard, knn_laplacian
from training import fit_on_one_thread

pytestmark = pytest.mark.usefixtures("one_thread")


def data_of(tokens: np.ndarray, scores: np.ndarray, labelled, unlabelled):
    """What the guard reads of a TrainingData."""
    return types.SimpleNamespace(tokens=tokens, labelled=np.asarray(labelled), unlabelled=np.asarray(unlabelled),
                                 training_target=lambda indices: scores[indices])


def clustered_videos(seed: int, score_follows_cluster: bool, count: int = 120, clusters: int = 10):
    """``[videos, 1 view, 4 tokens, 16]`` features in clusters (venues, say) and scores that either
    follow the cluster (neighbours agree: a graph helps) or vary inside it along a direction a
    ridge finds (neighbours disagree: a graph blurs it)."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, clusters, count)
    if score_follows_cluster:
        scores = rng.uniform(0, 1, clusters)[cluster] + rng.normal(size=count) * 0.03
        centres, quality_share = rng.normal(size=(clusters, 16)) * 3, 0.0
    else:
        scores = rng.uniform(0, 1, count)
        centres, quality_share = rng.normal(size=(clusters, 16)) * 4, 3.0
    direction = rng.normal(size=16)
    direction /= np.linalg.norm(direction)
    tokens = (centres[cluster][:, None] + rng.normal(size=(count, 4, 16)) * 0.3
              + quality_share * scores[:, None, None] * direction)
    return 10 * tokens[:, None].astype(np.float32), scores


def split(seed: int, count: int = 120, labelled: int = 24):
    order = np.random.default_rng(seed).permutation(count)
    return order[:labelled], order[labelled:]


def test_the_laplacian_is_symmetric_with_rows_summing_to_zero():
    features = np.random.default_rng(0).normal(size=(12, 5))
    laplacian = knn_laplacian(features, 3)
    np.testing.assert_allclose(laplacian, laplacian.T)
    np.testing.assert_allclose(laplacian.sum(axis=1), 0.0, atol=1e-12)
    assert (np.diag(laplacian) >= 1.0).all()  # every node has at least its k neighbours, over k


def laplacian_ridge(gram, laplacian_gram, labelled: int, targets, strength: float):
    """The direct solve the guard's fast path must give: dual coefficients over the nodes (the
    first ``labelled`` of them labelled) of (J K + alpha I + gamma' L K) a = J (y - mean y)."""
    count = len(gram)
    system = ALPHA * np.eye(count) + strength * (labelled / count) * laplacian_gram
    system[:labelled] += gram[:labelled]
    right = np.zeros(count)
    right[:labelled] = targets - targets.mean()
    return np.linalg.solve(system, right)


def test_without_the_graph_it_is_ridge_and_the_graph_pulls_neighbours_together():
    rng = np.random.default_rng(1)
    features, targets = rng.normal(size=(30, 8)) * 5, rng.normal(size=10)
    labelled, queries = features[:10], features[10:]
    mean = labelled.mean(axis=0)
    weights = np.linalg.solve((labelled - mean).T @ (labelled - mean) + ALPHA * np.eye(8),
                              (labelled - mean).T @ (targets - targets.mean()))
    centred = features - mean
    gram = centred @ centred.T
    laplacian = knn_laplacian(features, 3)
    solver = _FoldSolver(gram, laplacian @ gram)
    train, everyone = np.arange(10), np.arange(30)
    plain = solver.held_out_values(train, everyone, targets, 0.0)
    np.testing.assert_allclose(plain[10:], (queries - mean) @ weights + targets.mean(), atol=1e-9)

    def roughness(values):  # along the graph the fitted values differ less with a penalty on it
        return float(values @ laplacian @ values)

    assert roughness(solver.held_out_values(train, everyone, targets, STRENGTH)) < roughness(plain)


@pytest.mark.parametrize("seed", [3, 5])
def test_it_drops_a_graph_whose_neighbours_disagree_in_score(seed):
    tokens, scores = clustered_videos(seed, score_follows_cluster=False)
    record = graph_guard(data_of(tokens, scores, *split(seed)), seed, repeats=10, margin=0.1)
    assert record["without_graph"] > 0.5  # the ridge finds the score ...
    assert record["signal"] < -0.12 and record["drops_graph"]  # ... and the graph blurs it
    assert record["signal"] == pytest.approx(record["with_graph"] - record["without_graph"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_it_keeps_a_graph_whose_neighbours_agree_in_score(seed):
    tokens, scores = clustered_videos(seed, score_follows_cluster=True)
    record = graph_guard(data_of(tokens, scores, *split(seed)), seed, repeats=10, margin=0.1)
    assert record["signal"] > -0.02 and not record["drops_graph"]


def test_only_labelled_and_unlabelled_videos_are_read():
    tokens, scores = clustered_videos(0, score_follows_cluster=False)
    labelled, unlabelled = split(0, labelled=24)
    unlabelled = unlabelled[:70]  # the other 26 play validation and test videos
    record = graph_guard(data_of(tokens, scores, labelled, unlabelled), 0, 5, 0.1)
    others = np.setdiff1d(np.arange(len(scores)), np.concatenate([labelled, unlabelled]))
    hidden_tokens, hidden_scores = tokens.copy(), scores.copy()
    hidden_tokens[others], hidden_scores[others] = np.nan, np.nan
    assert graph_guard(data_of(hidden_tokens, hidden_scores, labelled, unlabelled), 0, 5, 0.1) == record
    # unlabelled scores are never read either
    hidden_scores[unlabelled] = np.nan
    assert graph_guard(data_of(hidden_tokens, hidden_scores, labelled, unlabelled), 0, 5, 0.1) == record


def test_its_folds_follow_the_run_seed():
    tokens, scores = clustered_videos(1, score_follows_cluster=False)
    data = data_of(tokens, scores, *split(1))
    assert graph_guard(data, 5, 4, 0.1) == graph_guard(data, 5, 4, 0.1)
    assert graph_guard(data, 5, 4, 0.1)["with_graph"] != graph_guard(data, 6, 4, 0.1)["with_graph"]


@pytest.mark.parametrize("labelled, unlabelled, reason", [
    (9, 50, "fewer than 10 labelled videos"), (40, 0, "no unlabelled videos")])
def test_with_too_few_videos_it_keeps_the_graph_and_says_why(labelled, unlabelled, reason):
    tokens, scores = clustered_videos(0, score_follows_cluster=False)
    record = graph_guard(data_of(tokens, scores, np.arange(labelled), labelled + np.arange(unlabelled)), 0, 10, 0.1)
    assert record["signal"] is None and not record["drops_graph"] and record["reason"] == reason
    assert describe_guard(record) == f"graph guard not computed ({reason})"


# ------------------------------------------------------------------ in a trs run


@pytest.fixture(scope="module")
def fast(fast_flags) -> list[str]:
    return fast_flags[1::2]


def config_for(dataset, fast, *extra):
    return build_config(overrides=[*fast, *extra], features=str(dataset["cache"]), manifest=str(dataset["manifest"]),
                        method="trs", ratio=0.8, seed=0, validation_fraction=0.2)


def test_a_dropped_graph_makes_the_run_the_one_configured_without_it(tiny_dataset, fast):
    # margin -2: the graph would have to gain more than 2 out of fold, so the guard always drops it
    # the EMA teacher in both (semi.teacher=auto would take the ridge where the guard drops the graph)
    guarded = fit_on_one_thread(config_for(tiny_dataset, fast, "semi.graph_guard_margin=-2", "semi.teacher=ema"))
    without_graph = fit_on_one_thread(config_for(tiny_dataset, fast, "semi.use_graph=false", "semi.teacher=ema"))
    gate = guarded.diagnostics["gate"]
    record = gate["graph_guard"]
    assert record["drops_graph"] and record["n_labelled"] == gate["n_labelled"] and record["signal"] is not None
    assert gate["configured"] == "teacher+reference, graph 3" and gate["default"] == "teacher+reference, graph 0"
    assert all(option["graph_strength"] == 0 for option in gate["options"].values())
    assert gate["options"] == without_graph.diagnostics["gate"]["options"]
    assert gate["chosen"] == without_graph.diagnostics["gate"]["chosen"]
    line = describe_outcome(gate)
    assert line.startswith(f"gate ({gate['n_labelled']} labelled videos): graph guard dropped the graph: out of fold ")
    assert "the guarded 'teacher+reference, graph 0'" in line and "the configured" not in line
    np.testing.assert_allclose(guarded.predictions, without_graph.predictions, rtol=0, atol=1e-6)


def test_a_kept_graph_leaves_the_run_as_without_the_guard(tiny_dataset, fast):
    kept = fit_on_one_thread(config_for(tiny_dataset, fast, "semi.graph_guard_margin=2"))
    unguarded = fit_on_one_thread(config_for(tiny_dataset, fast, "semi.graph_guard=false"))
    assert not kept.diagnostics["gate"]["graph_guard"]["drops_graph"]
    assert "graph_guard" not in unguarded.diagnostics["gate"]
    assert kept.diagnostics["gate"]["options"] == unguarded.diagnostics["gate"]["options"]
    np.testing.assert_array_equal(kept.predictions, unguarded.predictions)


def test_without_a_configured_graph_there_is_nothing_to_guard(tiny_dataset, fast):
    result = fit_on_one_thread(config_for(tiny_dataset, fast, "semi.use_graph=false"))
    assert "graph_guard" not in result.diagnostics["gate"]


def test_the_guarded_options_are_the_ones_without_the_graph(tiny_dataset, fast):
    names = [option.name for option in gate_options(config_for(tiny_dataset, fast), without_graph=True)]
    assert names == ["teacher+reference, graph 0", "teacher, graph 0"]
    plain = config_for(tiny_dataset, fast, "semi.use_reference=false")
    assert [option.name for option in gate_options(plain, without_graph=True)] == ["teacher, graph 0"]


@pytest.mark.parametrize("assignment", ["semi.graph_guard_margin=nan", "semi.graph_guard_margin=inf",
                                        "semi.graph_guard_repeats=0", "semi.graph_guard=maybe"])
def test_bad_guard_settings_are_user_errors(tiny_dataset, fast, assignment):
    with pytest.raises(UserError, match="graph_guard"):
        config_for(tiny_dataset, fast, assignment)


@pytest.mark.parametrize("strength", [0.0, 0.3])
def test_the_fast_fold_solver_gives_the_direct_solution(strength):
    rng = np.random.default_rng(2)
    features, targets = rng.normal(size=(40, 12)) * 3, rng.normal(size=15)  # 15 labelled, 25 unlabelled
    centred = features - features[:15].mean(axis=0)
    gram = centred @ centred.T
    laplacian_gram = knn_laplacian(features) @ gram
    train, held = np.arange(3, 15), np.arange(3)
    fast = _FoldSolver(gram, laplacian_gram).held_out_values(train, held, targets[train], strength)
    order = np.concatenate([train, held, np.arange(15, 40)])  # the direct solve: training fold first
    dual = laplacian_ridge(gram[np.ix_(order, order)], laplacian_gram[np.ix_(order, order)], len(train),
                           targets[train], strength)
    direct = gram[np.ix_(held, order)] @ dual + targets[train].mean()
    np.testing.assert_allclose(fast, direct, rtol=1e-9, atol=1e-9)
