from pathlib import Path

import pytest

from certa.errors import InputError
from certa.study.config import RunConfig
from certa.study.stages import check_methods

SHIPPED_CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_validates(path):
    # A config in configs/ is run by hand for hours; a bad field must fail here, not at `certa run`.
    # from_yaml validates every method's training config too.
    check_methods(RunConfig.from_yaml(path).methods)


def test_shipped_configs_are_found():
    assert {"results.yaml", "results-cpu.yaml", "study.yaml"} <= {path.name for path in SHIPPED_CONFIGS}


def test_yaml_config_validates_and_accepts_dataset_shorthand(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: default\ndatasets: [arithmetic, {name: triviaqa, test_limit: 50}]\n"
                    "training:\n  grace: {epochs: 1, lr: 0.001}\n")
    config = RunConfig.from_yaml(path)
    assert [d.name for d in config.datasets] == ["arithmetic", "triviaqa"]
    assert config.datasets[1].test_limit == 50
    grace = config.train_config("grace")
    assert type(grace).__name__ == "GraceConfig" and grace.epochs == 1 and grace.lr == 0.001
    assert grace.token_lr == type(grace)().token_lr  # unset fields keep the method's own defaults
    assert config.train_config("conftuner").epochs == type(config.train_config("conftuner"))().epochs


@pytest.mark.parametrize(
    "text, message",
    [
        ("modle: default\n", "unknown key 'modle'"),
        ("generation: {batchsize: 4}\n", "unknown key 'generation.batchsize'"),
        ("generation: {max_new_tokens: 0}\n", "field 'generation.max_new_tokens'"),
        ("training: {grace: {lora_r: many}}\n", "training.grace: field 'lora_r'"),
        ("training: {grace: {readout: soon}}\n", "training.grace: field 'readout'"),
        ("training: {conftuner: {token_lr: 0.1}}\n", "training.conftuner: unknown key 'token_lr'"),
        ("training: {platt: {epochs: 1}}\n", "'platt' is not a trained method"),
        ("training: {graec: {epochs: 1}}\n", "unknown method 'graec'. Did you mean 'grace'"),
        ("model: [unclosed\n", "malformed YAML"),
        ("- a list\n", "expected a mapping"),
        ("datasets: [arithmetic]\ncross_domain: {datasets: [arithmetic, capitals]}\n",
         "dataset 'capitals' is not in 'datasets' \\(arithmetic\\)"),
        ("datasets: [arithmetic]\nmethods: [grace]\nscaling: {dataset: arithmetc}\n", "dataset 'arithmetc'"),
        ("datasets: [arithmetic]\nmethods: [sequence_likelihood]\nscaling: {dataset: arithmetic}\n",
         "scaling reads 'grace' confidences while sampling, so it must be a trained method in 'methods' \\(none\\)"),
        ("methods: [grace, linear_probe]\nscaling: {dataset: arithmetic, confidence: linear_probe}\n",
         "scaling reads 'linear_probe' .* a trained method in 'methods' \\(grace\\)"),
        # settings a study would not use: a map's key, a seed under a method, a grid for an untrained method
        ("methods: [grace+platt]\ntraining: {grace+platt: {epochs: 3}}\n",
         "training.grace\\+platt: give the trained method's own name, 'grace'"),
        ("methods: [grace]\nseeds: [1, 2]\ntraining: {grace: {seed: 7}}\n", "training.grace.seed: the study's 'seed'"),
        ("methods: [grace]\ntuning: {grids: {grace: {seed: [1, 2]}}}\n", "tuning.grids.grace.seed: the study's"),
        ("methods: [grace, linear_probe]\ntuning: {grids: {linear_probe: {C: [1, 2]}}}\n",
         "tuning.grids.linear_probe: 'linear_probe' is not a trained method among the methods \\(grace\\)"),
        ("methods: [grace+platt]\ntuning: {grids: {grace+platt: {epochs: [1, 2]}}}\n",
         "tuning.grids.grace\\+platt: 'grace\\+platt' is not a trained method among the methods \\(grace\\)"),
        ("methods: [grace]\ntraining: {conftuner: {epochs: 1}}\ntuning: {grids: {conftuner: {lr: [1.0e-4]}}}\n",
         "tuning.grids.conftuner: 'conftuner' is not a trained method among the methods"),
        ("datasets: [a.jsonl, other/a.jsonl]\n", "two datasets share a name; give one a 'label'"),
    ],
)
def test_config_errors_name_the_field(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        RunConfig.from_yaml(path)


def test_dataset_keys_are_path_safe_names():
    config = RunConfig.from_dict({"datasets": ["arithmetic", "data/My Set.jsonl", "hf:owner/trivia_qa:rc",
                                               {"name": "x.jsonl", "label": "mine"}]})
    assert [d.key for d in config.datasets] == ["arithmetic", "My_Set", "trivia_qa_rc", "mine"]
    assert config.dataset("My_Set").name == "data/My Set.jsonl"
