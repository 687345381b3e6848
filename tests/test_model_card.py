"""Model cards: written by the trainer for every artifact, parsed as YAML front matter, evaluation added later."""

from __future__ import annotations

import json

import pytest
import yaml

from certa.errors import InputError
from certa.models.card import add_evaluation_to_card, model_card, read_card_metadata, write_model_card

INFO = {
    "format": 1, "method": "grace", "base_model": "default", "base_model_path": None, "vocab_size": 49153,
    "method_info": {"token": "<CNF>", "token_id": 49152},
    "train_config": {"epochs": 2.0, "batch_size": 8, "lr": 3e-4, "lora_r": 8, "target_modules": ["q_proj", "v_proj"],
                     "max_steps": None},
    "versions": {"python": "3.11.7", "certa": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0"},
    "data": {"records": 400, "items": 320, "accuracy": 0.31234, "models": ["default"], "sources": []},
    "steps": 80,
    "validation": {"answers": 80, "accuracy": 0.3, "best_step": 60, "history": [], "brier": 0.1875,
                   "brier_recalibrated": 0.17},
}


def front_matter(text: str) -> dict:
    """The YAML block between the first two '---' lines, parsed with yaml.safe_load."""
    assert text.startswith("---\n")
    block, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(block)


def test_the_card_is_yaml_front_matter_that_says_what_the_artifact_is():
    text = model_card({**INFO, "name": "default-grace"})
    meta = front_matter(text)
    assert meta["model_name"] == "default-grace"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"   # the built-in's Hub id, not "default"
    assert meta["library_name"] == "certa"
    assert meta["license"] == "apache-2.0"
    assert meta["method"] == "grace"
    assert {"certa", "grace", "calibration", "lora"} <= set(meta["tags"])
    assert meta["certa_version"] == "0.1.0"
    assert meta["hyperparameters"] == INFO["train_config"]
    assert meta["training_data"]["answers"] == 400
    assert meta["training_data"]["training_items"] == 320
    assert meta["training_data"]["answer_accuracy"] == 0.3123
    assert meta["training_data"]["validation_answers"] == 80
    # At training time the only metrics are the early-stopping split's.
    (result,) = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "default-grace"
    assert result["dataset"]["split"] == "validation"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"brier": 0.1875, "brier_recalibrated": 0.17}
    body = text.split("\n---\n", 1)[1]
    assert "# default-grace: GrACE confidence for HuggingFaceTB/SmolLM2-135M-Instruct" in body
    assert 'certa.load_model("default-grace")' in body
    assert "| graded answers | 400 |" in body
    assert "| `lora_r` | 8 |" in body
    assert "No held-out evaluation recorded yet" in body
    assert "Early stopping kept step 60; Brier score on the held-out training answers 0.1875; no recalibration map." \
        in body


@pytest.mark.parametrize("recalibrate, kind, says", [
    ("auto", "identity", "no recalibration map (neither Platt nor beta lowered their out-of-fold Brier score "
                         "clearly)."),
    ("none", "identity", "no recalibration map (recalibrate: none)."),
    ("auto", "beta", "after the beta map fitted on them 0.17 (in sample; out of fold 0.178)."),
    ("platt", "platt", "after the platt map fitted on them 0.17 (in sample)."),
    ("auto", "constant", "the read-out did no better than a constant on them, so this artifact gives every answer "
                         "the training accuracy, 0.3."),
])
def test_the_card_says_which_final_map_training_chose(recalibrate, kind, says):
    out_of_fold = {"identity": 0.1875, "beta": 0.178} if recalibrate == "auto" else {}
    info = {**INFO, "train_config": {**INFO["train_config"], "recalibrate": recalibrate},
            "validation": {**INFO["validation"], "recalibration_brier_out_of_fold": out_of_fold},
            "recalibration": {"kind": kind, "params": {"p": 0.3} if kind == "constant" else {}}}
    assert f"held-out training answers 0.1875; {says}" in model_card(info)


def test_a_base_model_certa_does_not_ship_is_named_as_given_with_an_unknown_license():
    meta = front_matter(model_card({**INFO, "base_model": "/models/my-llm", "validation": None}))
    assert meta["base_model"] == "/models/my-llm"
    assert meta["license"] == "other"
    assert "model-index" not in meta   # no metric known yet: no empty results block


def test_the_card_is_a_pure_function_of_the_info():
    assert model_card(INFO) == model_card(json.loads(json.dumps(INFO)))


def _artifact(tmp_path):
    out = tmp_path / "default-grace"
    out.mkdir()
    (out / "certa.json").write_text(json.dumps(INFO), encoding="utf-8")
    write_model_card(out, INFO)
    return out


def test_add_evaluation_rewrites_the_card_with_held_out_metrics_and_their_intervals(tmp_path):
    out = _artifact(tmp_path)
    info_bytes = (out / "certa.json").read_bytes()
    # A method's entry of metrics.json: metrics with intervals, plus keys that are not metrics.
    metrics = {"ece": {"value": 0.0512345, "ci": [0.031, 0.072]}, "brier": {"value": 0.2, "ci": [0.18, 0.22]},
               "auroc": {"value": 0.71, "ci": [None, None]}, "mean_confidence": 0.4,
               "reliability": {"bins": [1, 2]}, "extra": {"x": 1}}
    add_evaluation_to_card(out, metrics, dataset="capitals-phrased", split="test", n=200)
    meta = read_card_metadata(out)
    assert meta["model_name"] == "default-grace"
    results = meta["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == ["validation", "test"]
    test = {m["type"]: m for m in results[1]["metrics"]}
    assert set(test) == {"ece", "brier", "auroc", "mean_confidence"}
    assert test["ece"]["value"] == 0.0512
    assert test["ece"]["name"] == "ECE (95% CI 0.031–0.072)"
    assert test["auroc"]["name"] == "AUROC"                       # no interval: none invented
    assert results[1]["dataset"]["name"] == "capitals-phrased"
    text = (out / "README.md").read_text(encoding="utf-8")
    assert "| capitals-phrased | test | 200 | 0.051 [0.031, 0.072] | 0.200 [0.180, 0.220] | 0.710 |" in text
    # certa.json (and so the artifact's id) is untouched; no temporary file is left behind.
    assert (out / "certa.json").read_bytes() == info_bytes
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "certa.json"]


def test_a_second_evaluation_of_the_same_data_replaces_the_first_and_others_are_kept(tmp_path):
    out = _artifact(tmp_path)
    add_evaluation_to_card(out, {"ece": 0.30}, dataset="a")
    add_evaluation_to_card(out, {"ece": 0.10}, dataset="b")
    add_evaluation_to_card(out, {"ece": 0.20}, dataset="a")
    evaluation = read_card_metadata(out)["evaluation"]
    assert [(e["dataset"], e["metrics"]["ece"]["value"]) for e in evaluation] == [("b", 0.1), ("a", 0.2)]


def test_estimate_objects_are_accepted(tmp_path):
    from certa.evaluation.estimate import Estimate

    out = _artifact(tmp_path)
    add_evaluation_to_card(out, {"brier": Estimate(0.25, 0.2, 0.3)}, dataset="pooled")
    assert read_card_metadata(out)["evaluation"][0]["metrics"]["brier"] == {"value": 0.25, "ci": [0.2, 0.3]}


def test_bad_evaluations_and_cards_are_one_line_errors(tmp_path):
    out = _artifact(tmp_path)
    with pytest.raises(InputError, match="no metric values"):
        add_evaluation_to_card(out, {"reliability": {}})
    with pytest.raises(InputError, match="no numeric value"):
        add_evaluation_to_card(out, {"ece": {"value": "high"}})
    with pytest.raises(InputError, match="not a certa artifact"):
        add_evaluation_to_card(tmp_path, {"ece": 0.1})
    (out / "README.md").write_text("# no front matter\n", encoding="utf-8")
    with pytest.raises(InputError, match="no YAML front matter"):
        read_card_metadata(out)


def test_the_trainer_writes_the_card_for_every_artifact(tiny_lm, tiny_model_dir, tmp_path):
    """A real (tiny) training: the artifact's README.md is certa's card, not PEFT's blank template."""
    from test_trainer import ToyObjective, make_records

    from certa.models import load_model
    from certa.training.config import TrainConfig
    from certa.training.trainer import train

    class WithValidation(ToyObjective):
        def validation_items(self, lm, records, config):
            return [{**item, "correct": item["y"]} for item in self.build_items(lm, records, config)]

        def confidences(self, lm, batch):
            mask = batch["attention_mask"]
            logits = lm.model(input_ids=batch["input_ids"], attention_mask=mask,
                              position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
            return logits.softmax(-1)[:, self.trainable_token_ids(lm)[0]]

    lm = load_model(str(tiny_model_dir), device="cpu")
    config = TrainConfig(epochs=1, batch_size=8, target_modules=["q_proj"], validation_fraction=0.25, seed=0)
    out = train(WithValidation(), lm, make_records(lm, 64), config, tmp_path / "toy-artifact", progress=False)
    text = (out / "README.md").read_text(encoding="utf-8")
    assert "Model Card for Model ID" not in text
    meta = front_matter(text)
    assert meta["model_name"] == "toy-artifact"
    assert meta["base_model"] == str(tiny_model_dir)
    assert meta["library_name"] == "certa" and meta["method"] == "toy"
    assert meta["hyperparameters"]["target_modules"] == ["q_proj"]
    assert meta["training_data"]["answers"] == 64
    assert meta["training_data"]["validation_answers"] == 16
    brier = json.loads((out / "certa.json").read_text())["validation"]["brier"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == round(brier, 4)
