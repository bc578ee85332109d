"""The run-folder contract: what training writes is what evaluation and predict read back."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aqa import run_folder
from aqa.errors import UserError
from aqa.run_folder import RunIdentity

ROWS = [("tr0", "train", 50.0, 51.25, True, "pike"), ("tr1", "train", math.nan, 40.0, False, ""),
        ("te0", "test", 61.5, 0.1 + 0.2, False, "pike"), ("te1", "test", 70.0, 69.0, False, "tuck")]


def test_predictions_csv_has_the_documented_columns_exact_numbers_and_empty_unknown_scores():
    text = run_folder.predictions_csv(ROWS)
    assert text.splitlines() == [
        "key,split,true,pred,labelled,group", "tr0,train,50.0,51.25,1,pike", "tr1,train,,40.0,0,",
        "te0,test,61.5,0.30000000000000004,0,pike", "te1,test,70.0,69.0,0,tuck"]
    assert run_folder.epoch_predictions_csv([(0, "te0", 61.5, 60.0)]) == "epoch,key,true,pred\n0,te0,61.5,60.0\n"


def test_written_predictions_read_back_exactly_for_each_split(tmp_path):
    run_folder.write_predictions(tmp_path, ROWS)
    test = run_folder.read_predictions(tmp_path)
    assert test.keys == ["te0", "te1"] and test.predicted.tolist() == [0.1 + 0.2, 69.0]
    assert test.true.tolist() == [61.5, 70.0] and test.groups == ["pike", "tuck"]
    train = run_folder.read_predictions(tmp_path, "train")
    assert train.keys == ["tr0", "tr1"] and math.isnan(train.true[1]) and train.predicted.tolist() == [51.25, 40.0]


def test_a_test_video_without_a_score_is_one_line_naming_the_file(tmp_path):
    run_folder.write_predictions(tmp_path, [("te0", "test", math.nan, 1.0, False, "")])
    with pytest.raises(UserError, match="true '' is not a number") as caught:
        run_folder.read_predictions(tmp_path)
    assert "predictions.csv" in str(caught.value) and "\n" not in str(caught.value)


def test_identity_comes_from_metrics_json_and_its_dataset_is_the_name_not_the_annotation_kind(tmp_path):
    identity = RunIdentity(dataset="fisv-tes", target="TES", method="trs", ratio=0.2, seed=3, preset="default")
    run_folder.write_metrics(tmp_path, {"spearman": 0.5, **identity.as_dict()})
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "manifest", "method": "trs", "ratio": 0.2}))
    assert run_folder.read_identity(tmp_path) == identity
    assert identity.cell == ("fisv-tes", "TES", "trs", 0.2)


def test_without_metrics_json_the_identity_is_read_where_config_json_keeps_it(tmp_path):
    config = {"dataset": "manifest", "target": None, "method": "ridge", "preset": "default", "ratio": 0.5,
              "seed": 1, "resolved": {"dataset_name": "tiny", "target": "score"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert run_folder.read_identity(tmp_path) == RunIdentity("tiny", "score", "ridge", 0.5, 1, "default")


@pytest.mark.parametrize("config, message", [
    ({"method": "trs"}, "do not say the run's dataset, target, ratio"),
    ({"dataset": "d", "target": "t", "method": "m", "ratio": "half"}, "labelled ratio 'half' is not a number"),
    ({"dataset": "d", "target": "t", "method": "m", "ratio": 0.5, "seed": "x"}, "seed 'x' is not an integer"),
    ([1, 2], "not a JSON object"),
])
def test_an_identity_that_cannot_be_read_is_one_line(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=message) as caught:
        run_folder.read_identity(tmp_path)
    assert str(tmp_path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_folder_is_finished_only_with_every_file_of_a_finished_run(tmp_path):
    for name in run_folder.FINISHED_FILES[:-1]:
        (tmp_path / name).write_text("{}")
    assert not run_folder.is_finished(tmp_path)
    (tmp_path / run_folder.FINISHED_FILES[-1]).write_bytes(b"")
    assert run_folder.is_finished(tmp_path)
    with pytest.raises(UserError, match="missing config.json and metrics.json"):
        run_folder.read_identity(tmp_path / "nowhere")


def test_epoch_predictions_read_as_one_row_per_epoch_in_the_order_of_the_test_keys(tmp_path):
    rows = [(epoch, key, 1.0, float(epoch * 10 + index)) for epoch in (2, 1) for index, key in enumerate(("b", "a"))]
    run_folder.write_epoch_predictions(tmp_path, rows)
    epochs, matrix = run_folder.read_epoch_predictions(tmp_path, ["a", "b"])
    assert epochs == [1, 2] and np.array_equal(matrix, [[11.0, 10.0], [21.0, 20.0]])
    with pytest.raises(UserError, match="epoch 2 has 2 of 3 test predictions"):
        run_folder.read_epoch_predictions(tmp_path, ["a", "b", "c"])
