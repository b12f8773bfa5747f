"""`[models.<name>]` tables in the agent config: parsed, validated like a manifest, one sentence on error."""

import pytest

from edge_agent.config import ConfigError, ModelSettings, load_config, reference_markdown


def test_models_table_toml_and_yaml(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[models.ich.applies_to]\nslice_thickness_mm = [0.5, 6.0]\nqa_keywords = ["QA", "DAILY"]\n'
                    '[models.ich.applies_to.kernels]\nrefuse_kinds = ["bone"]\nunknown = "refuse"\n'
                    '[models.lung_nodule]\n')
    cfg = load_config(conf, environ={})
    assert isinstance(cfg.models["ich"], ModelSettings)
    assert cfg.applies_to_overrides() == {"ich": {"slice_thickness_mm": [0.5, 6.0], "qa_keywords": ["QA", "DAILY"],
                                                  "kernels": {"refuse_kinds": ["bone"], "unknown": "refuse"}}}
    yaml = tmp_path / "c.yaml"
    yaml.write_text("models:\n  ich:\n    applies_to:\n      contrast: refuse\n")
    assert load_config(yaml, environ={}).applies_to_overrides() == {"ich": {"contrast": "refuse"}}
    assert load_config(environ={}).models == {}


@pytest.mark.parametrize("text, fragment", [
    ("[models.ich]\nmood = 'calm'\n", "unknown setting models.ich.mood"),
    ("[models.ich]\napplies_to = 3\n", "'models.ich.applies_to' must be a table of applies_to keys"),
    ("[models.ich.applies_to]\nkvp = 'high'\n", "'models.ich.applies_to.kvp' must be [minimum, maximum] in kV"),
    ("[models.ich.applies_to]\ncolour = 'red'\n", "'models.ich.applies_to.colour' is not a known key"),
    ("[models.ich.applies_to]\ncontrast = 'maybe'\n", "must be one of refuse, allow, require"),
    ("[models.Bad]\n", "[models.Bad]"),
    ("models = 3\n", "[models] in"),
])
def test_bad_models_tables_are_one_sentence(tmp_path, text, fragment):
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(conf, environ={})
    assert fragment in str(err.value) and "\n" not in str(err.value) and str(conf) in str(err.value)


def test_reference_documents_the_models_table():
    ref = reference_markdown()
    assert "**`[models.<name>]`**" in ref and "| `applies_to` | `{}` | none |" in ref


def test_a_models_own_mode_overrides_inference_mode(tmp_path):
    from edge_agent.service.app import Agent

    path = tmp_path / "agent.toml"
    path.write_text('[inference]\nmode = "live"\n[models.ich]\nmode = "shadow"\n')
    agent = Agent(load_config(path, environ={}))
    assert agent._mode_for("ich") == "shadow" and agent._mode_for("lung_nodule") == "live"
    path.write_text('[inference]\nmode = "shadow"\n[models.ich]\nmode = "live"\n')
    agent = Agent(load_config(path, environ={}))
    assert agent._mode_for("ich") == "live" and agent._mode_for("lung_nodule") == "shadow"
    path.write_text('[models.ich]\nmode = "silent"\n')
    with pytest.raises(ConfigError, match="mode"):
        load_config(path, environ={})
