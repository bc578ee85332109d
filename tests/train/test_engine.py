"""The heads, token resampling, the graph step, and what each TRS switch changes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from train.config import HeadConfig, ReferenceConfig, apply_overrides, preset_config
from train.data import draw_split, prepare_data, resample_tokens, segment_means
from train.methods import make_method
from train.methods.pseudo_labels import confidence_of
from train.graph import (
    knn_laplacian_from_similarity, nearest_node_mean, pooled_similarity, refine_on_graph, similarity_to_nodes,
    token_similarity,
)
from train.models import MixerHead, ReferenceNetwork, make_optimiser
from training import train_to_end


@pytest.mark.parametrize("tokens, batch", [(1, 1), (4, 3), (10, 5)])
def test_mixer_head_shapes(tokens, batch):
    head = MixerHead(tokens, 24, HeadConfig(dim=8, depth=2, token_hidden=6, channel_hidden=12))
    score, log_variance = head(torch.randn(batch, tokens, 24))
    assert score.shape == (batch,) and log_variance.shape == (batch,)
    assert torch.isfinite(score).all()


def test_paper_preset_head_is_the_paper_codes_mixer():
    config = preset_config("paper", "trs")
    assert (config.head.depth, config.head.token_hidden, config.head.channel_hidden, config.head.dim) == (8, 512, 2048, 1024)
    assert config.optim.epochs == 150
    head = MixerHead(10, 1024, config.head)
    assert len(head.blocks) == 8
    block = head.blocks[0]
    assert block.token_mlp[0].in_features == 10 and block.token_mlp[0].out_features == 512
    assert block.channel_mlp[0].in_features == 1024 and block.channel_mlp[0].out_features == 2048


def test_reference_network_shapes_and_antisymmetry():
    torch.manual_seed(0)
    network = ReferenceNetwork(12, ReferenceConfig(dim=8, heads=2, dropout=0.0)).eval()
    query, exemplar = torch.randn(5, 4, 12), torch.randn(5, 7, 12)  # token counts may differ
    delta, log_variance = network(query, exemplar)
    assert delta.shape == (5,) and log_variance.shape == (5,)
    backward, _ = network(exemplar, query)
    assert torch.allclose(delta, -backward, atol=1e-6)
    plain = ReferenceNetwork(12, ReferenceConfig(dim=8, heads=2, dropout=0.0, antisymmetric=False)).eval()
    forward, _ = plain(query, exemplar)
    reverse, _ = plain(exemplar, query)
    assert not torch.allclose(forward, -reverse, atol=1e-4)


def test_reference_network_attends_to_the_exemplar():
    torch.manual_seed(0)
    network = ReferenceNetwork(6, ReferenceConfig(dim=8, heads=2, dropout=0.0)).eval()
    query = torch.randn(1, 3, 6)
    first, _ = network(query, torch.randn(1, 3, 6))
    second, _ = network(query, torch.randn(1, 3, 6))
    assert not torch.allclose(first, second)


def test_resample_tokens_pools_and_interpolates():
    features = np.arange(2 * 6 * 1, dtype=np.float32).reshape(2, 6, 1)
    pooled = resample_tokens(features, 3)
    assert pooled.shape == (2, 3, 1)
    assert pooled[0, :, 0].tolist() == [0.5, 2.5, 4.5]
    stretched = resample_tokens(features[:, :2], 3)
    assert stretched[0, :, 0].tolist() == [0.0, 0.5, 1.0]
    assert resample_tokens(features, 6) is features
    uneven = resample_tokens(np.arange(5, dtype=np.float32).reshape(1, 5, 1), 2)
    assert uneven[0, :, 0].tolist() == [1.0, 3.0]  # clips 0-2 and 2-4 (the middle clip shared)


def test_segment_means_average_contiguous_runs_of_tokens_in_time_order():
    tokens = np.arange(2 * 10 * 2, dtype=np.float32).reshape(2, 10, 2)
    assert np.array_equal(segment_means(tokens, 1), tokens.mean(axis=1))
    thirds = segment_means(tokens, 3)
    assert thirds.shape == (2, 6)
    # 10 tokens in three runs: 0-3, 4-6, 7-9 (the first run one token longer); channels side by side
    expected = np.concatenate([tokens[:, 0:4].mean(axis=1), tokens[:, 4:7].mean(axis=1), tokens[:, 7:10].mean(axis=1)],
                              axis=1)
    assert np.array_equal(thirds, expected)
    assert thirds[0, :2].tolist() == [3.0, 4.0]  # tokens 0-3 of video 0, channels 0 and 1
    # at most one run per token: asking for more than there are tokens gives every token alone
    assert np.array_equal(segment_means(tokens[:, :2], 5), tokens[:, :2].reshape(2, 4))


def test_draw_split_is_seeded_and_keeps_at_least_two():
    keys = [f"k{i}" for i in range(30)]
    labelled, unlabelled, validation = draw_split(keys, 0.2, seed=1)
    assert len(labelled) == 6 and len(unlabelled) == 24 and validation == []
    assert draw_split(keys, 0.2, seed=1) == (labelled, unlabelled, validation)
    assert set(draw_split(keys, 0.2, seed=2)[0]) != set(labelled)
    assert len(draw_split(keys, 0.01, seed=1)[0]) == 2
    labelled, unlabelled, validation = draw_split(keys, 1.0, seed=0, validation_fraction=0.2)
    assert len(validation) == 6 and len(labelled) == 24 and unlabelled == []


def test_graph_refinement_pulls_pseudo_labels_towards_labelled_neighbours():
    # Two tight clusters; the pseudo-label of one member of each is wrong.
    generator = np.random.default_rng(0)
    centres = np.array([[5.0, 0.0], [-5.0, 0.0]])
    points = np.concatenate([centres[0] + generator.normal(0, 0.1, (6, 2)), centres[1] + generator.normal(0, 0.1, (6, 2))])
    values = np.array([1.0] * 6 + [-1.0] * 6)
    values[3], values[9] = -1.0, 1.0
    laplacian = knn_laplacian_from_similarity(pooled_similarity(points), neighbours=3)
    assert np.allclose(laplacian.sum(axis=1), 0) and np.allclose(laplacian, laplacian.T)
    confidence = np.ones(12)
    refined = refine_on_graph(laplacian, values, confidence, strength=2.0)
    assert refined[3] > 0 and refined[9] < 0
    assert np.allclose(refine_on_graph(laplacian, values, confidence, strength=0.0), values)
    # A high-confidence node barely moves.
    confidence[3] = 1000.0
    assert refine_on_graph(laplacian, values, confidence, strength=2.0)[3] < -0.9


def _config(tiny_dataset, *overrides, method="trs"):
    config = preset_config("default", method)
    config = dataclasses.replace(config, features=str(tiny_dataset["cache"]), dataset="manifest",
                                 manifest=str(tiny_dataset["manifest"]), ratio=0.5, seed=0)
    fast = ["optim.epochs=8", "semi.semi_epochs=2", "reference.epochs=3", "head.dim=16", "head.token_hidden=8",
            "head.channel_hidden=16", "reference.dim=16", "reference.heads=2", "reference.exemplars=5",
            "semi.mc_samples=3"]
    return apply_overrides(config, fast + list(overrides))


def test_trs_burn_in_is_exactly_the_supervised_model(tiny_dataset):
    supervised = train_to_end(_config(tiny_dataset, method="supervised"))
    # The student alone at test time: the reference's share would mix in another model.
    trs = train_to_end(_config(tiny_dataset, "semi.semi_epochs=0", "reference.test_share=0"))
    rows = np.arange(len(supervised.data.keys))
    assert np.array_equal(supervised.predict_scores(rows), trs.predict_scores(rows))
    assert not np.array_equal(supervised.predict_scores(rows), train_to_end(_config(tiny_dataset)).predict_scores(rows))


def test_each_trs_switch_changes_what_the_student_learns_from(tiny_dataset):
    full = train_to_end(_config(tiny_dataset))
    unlabelled = full.unlabelled
    last = full.pseudo_label_quality["refreshes"][-1]
    assert {"teacher_spearman", "reference_spearman", "fused_spearman", "refined_spearman", "pseudo_spearman",
            "confidence_error_spearman", "mae_by_confidence_quintile"} <= set(last)
    assert len(last["mae_by_confidence_quintile"]) == 5
    # The last refresh's per-video arrays: what the pseudo-labels were and what weighed them.
    refresh = full.last_refresh
    assert np.array_equal(refresh["rows"], unlabelled.numpy())
    assert np.allclose(refresh["pseudo"], full.pseudo[unlabelled].numpy(), atol=1e-6)
    assert np.isclose(refresh["relative_confidence"].mean(), 1.0)
    for name in ("teacher_value", "teacher_confidence", "reference_value", "reference_confidence"):
        assert refresh[name].shape == (len(unlabelled),) and np.isfinite(refresh[name]).all()
    assert float(full.weights[unlabelled].std()) > 0  # confidence weighting is active
    assert float(full.memory.slots["teacher_confidence"][unlabelled].min()) > 0
    assert float(full.memory.slots["reference_confidence"][unlabelled].min()) > 0
    rows = np.arange(len(full.data.keys))
    full_predictions = full.predict_scores(rows)

    no_confidence = train_to_end(_config(tiny_dataset, "semi.use_confidence=false"))
    assert torch.equal(no_confidence.weights[unlabelled], torch.ones(len(unlabelled)))

    no_graph = train_to_end(_config(tiny_dataset, "semi.use_graph=false"))
    assert "refined_spearman" not in no_graph.pseudo_label_quality["refreshes"][-1]
    assert no_graph.labelling.refiners == []

    no_reference = train_to_end(_config(tiny_dataset, "semi.use_reference=false"))
    assert no_reference.reference is None
    assert "reference_spearman" not in no_reference.pseudo_label_quality["refreshes"][-1]
    assert all(unit.phase != "reference" for unit in no_reference.units)

    no_memory = train_to_end(_config(tiny_dataset, "semi.use_memory=false"))
    assert float(no_memory.memory.slots["teacher_confidence"].abs().sum()) == 0

    for ablated in (no_confidence, no_graph, no_reference, no_memory):
        assert not np.array_equal(ablated.predict_scores(rows), full_predictions)


def test_memory_keeps_the_most_confident_output(tiny_dataset):
    trainer = make_method(_config(tiny_dataset, "semi.memory_decay=1.0"), prepare_data(_config(tiny_dataset)))
    rows = trainer.unlabelled
    count = len(rows)
    first_value, first_variance = torch.arange(count).double(), torch.full((count,), 1.0, dtype=torch.float64)
    trainer.memory.keep_best("teacher", rows, first_value, confidence_of(first_variance))
    second_variance = torch.full((count,), 2.0, dtype=torch.float64)
    second_variance[0] = 0.5  # only the first video's new output is more confident
    value, confidence = trainer.memory.keep_best("teacher", rows, first_value + 100, confidence_of(second_variance))
    assert value[0] == 100 and torch.equal(value[1:], first_value[1:])
    assert confidence[0] == pytest.approx(1 / (0.5 + 1e-6)) and confidence[1] == pytest.approx(1 / (1 + 1e-6))


def test_ridge_leave_one_out_chooses_from_the_grid(tiny_dataset):
    trainer = train_to_end(_config(tiny_dataset, "ridge.alpha=auto", method="ridge"))
    assert trainer.alpha in trainer.config.ridge.alphas
    assert set(trainer.loo_errors) == set(trainer.config.ridge.alphas)
    assert trainer.loo_errors[trainer.alpha] == min(trainer.loo_errors.values())
    fixed = train_to_end(_config(tiny_dataset, "ridge.alpha=123", method="ridge"))
    assert fixed.alpha == 123 and not fixed.loo_errors


def test_variable_clip_counts_are_resampled(tmp_path, dataset_writer):
    counts = {f"v{i:03d}": 3 + i % 5 for i in range(40)}
    cache, manifest, _, _ = dataset_writer(tmp_path, clips=lambda key: counts[key], views=1)
    config = _config({"cache": cache, "manifest": manifest}, "head.max_tokens=4")
    data = prepare_data(config)
    assert data.tokens.shape[1:3] == (1, 4)  # median 5, capped at 4
    assert sorted(set(data.clip_counts.tolist())) == [3, 4, 5, 6, 7]
    trainer = train_to_end(config)
    assert np.isfinite(trainer.predict_scores(data.test)).all()


@pytest.mark.parametrize("features, between_nodes", [("tokens", token_similarity),
                                                     ("pooled", lambda tokens: pooled_similarity(tokens.mean(axis=1)))])
def test_a_new_video_meets_the_graphs_nodes_as_the_nodes_meet_each_other(features, between_nodes):
    generator = np.random.default_rng(1)
    nodes = generator.normal(size=(9, 4, 6))
    assert np.allclose(similarity_to_nodes(nodes, nodes, features), between_nodes(nodes))
    query = nodes[[3]] + generator.normal(0, 0.01, (1, 4, 6))  # a near copy of node 3
    similarity = similarity_to_nodes(query, nodes, features)
    assert similarity.shape == (1, 9) and similarity.argmax() == 3
    # the nodes' own statistics: adding queries never changes how one query meets the nodes
    many = np.concatenate([query, generator.normal(size=(5, 4, 6)) * 10])
    assert np.allclose(similarity_to_nodes(many, nodes, features)[0], similarity[0])


def test_a_new_video_takes_the_mean_value_of_its_nearest_nodes():
    similarity = np.array([[0.9, 0.1, 0.8, 0.7], [0.0, 0.5, 0.5, 0.2]])
    values = np.array([1.0, 2.0, 3.0, 4.0])
    assert nearest_node_mean(similarity, values, 2).tolist() == [2.0, 2.5]  # ties: the earlier node first
    assert nearest_node_mean(similarity, values, 1).tolist() == [1.0, 2.0]
    assert nearest_node_mean(similarity, values, 10).tolist() == [2.5, 2.5]  # at most every node


def test_token_similarity_compares_videos_phase_by_phase():
    generator = np.random.default_rng(0)
    videos = generator.normal(size=(8, 5, 6))
    videos[1] = videos[0] + generator.normal(0, 0.05, (5, 6))  # the same routine
    videos[2] = videos[0][::-1]  # the same clips in reverse order
    similarity = token_similarity(videos)
    assert np.allclose(similarity, similarity.T) and np.allclose(np.diag(similarity), 1.0)
    assert similarity[0, 1] > 0.9 and similarity[0, 1] > similarity[0, 2] + 0.5


def test_the_optimiser_updates_like_the_per_tensor_adamw_loop():
    """make_optimiser's multi-tensor AdamW is the per-tensor loop's arithmetic (other code path:
    compared to rounding), with the configured learning rate and weight decay."""
    optim = preset_config("default", "supervised").optim
    trained = []
    for foreach in (True, False):
        torch.manual_seed(0)
        head = MixerHead(4, 8, HeadConfig(dim=8, token_hidden=8, channel_hidden=8, dropout=0.0))
        optimiser = (make_optimiser(head.parameters(), optim) if foreach else
                     torch.optim.AdamW(head.parameters(), lr=optim.lr, weight_decay=optim.weight_decay, foreach=False))
        generator = torch.Generator().manual_seed(1)
        tokens, targets = torch.randn(6, 4, 8, generator=generator), torch.randn(6, generator=generator)
        for _ in range(20):
            value, _ = head(tokens)
            optimiser.zero_grad()
            ((value - targets) ** 2).mean().backward()
            optimiser.step()
        trained.append(torch.cat([parameter.detach().flatten() for parameter in head.parameters()]))
    group = make_optimiser(MixerHead(4, 8, HeadConfig(dim=8)).parameters(), optim).param_groups[0]
    assert (group["lr"], group["weight_decay"], group["foreach"]) == (optim.lr, optim.weight_decay, True)
    torch.testing.assert_close(trained[0], trained[1], rtol=1e-5, atol=1e-6)
