import pytest

from certa.config import RunConfig
from certa.errors import InputError


def test_yaml_config_validates_and_accepts_dataset_shorthand(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: default\ndatasets: [arithmetic, {name: triviaqa, test_limit: 50}]\n"
                    "training:\n  grace: {epochs: 1, lr: 0.001}\n")
    config = RunConfig.from_yaml(path)
    assert [d.name for d in config.datasets] == ["arithmetic", "triviaqa"]
    assert config.datasets[1].test_limit == 50
    assert config.training.grace.epochs == 1 and config.training.conftuner is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("modle: default\n", "unknown key 'modle'"),
        ("generation: {batchsize: 4}\n", "unknown key 'generation.batchsize'"),
        ("generation: {max_new_tokens: 0}\n", "field 'generation.max_new_tokens'"),
        ("training: {grace: {lora_r: many}}\n", "field 'training.grace.lora_r'"),
        ("model: [unclosed\n", "malformed YAML"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_config_errors_name_the_field(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        RunConfig.from_yaml(path)
