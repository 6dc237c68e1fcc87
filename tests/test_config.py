"""Config keys: the authors' keys and defaults, their merged 12-epoch config, and our yaml files."""
import ast
from pathlib import Path

import pytest
import yaml

from detectron2.config import CfgNode, get_cfg

from dimaskdino.config import add_dimaskdino_config

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path("/work/shared/reference")
CONFIGS = REPO / "configs"
DEFAULTS_TSV = REFERENCE / "dimaskdino_config_defaults.tsv"
MERGED_YAML = REFERENCE / "dimaskdino_r50_4scale_bs16_12ep.merged.yaml"

needs_reference = pytest.mark.skipif(not DEFAULTS_TSV.exists(), reason="shared reference files not available")


def new_cfg():
    cfg = get_cfg()
    add_dimaskdino_config(cfg)
    return cfg


def lookup(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def normalised(value):
    """yacs stores yaml sequences as lists and python defaults as given: compare as lists."""
    if isinstance(value, (list, tuple)):
        return [normalised(v) for v in value]
    if isinstance(value, CfgNode):
        return {k: normalised(v) for k, v in value.items()}
    return value


def flatten(tree, prefix=""):
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, name + ".")
        else:
            yield name, value


@needs_reference
def test_every_authors_key_with_its_default():
    cfg = new_cfg()
    rows = [line.rstrip("\n").split("\t") for line in DEFAULTS_TSV.read_text().splitlines() if line.strip()]
    assert len(rows) > 80
    for key, literal in rows:
        expected = ast.literal_eval(literal)
        assert normalised(lookup(cfg, key)) == normalised(expected), key


def test_ablation_switches_default_on():
    cfg = new_cfg()
    assert cfg.MODEL.MaskDINO.DI_ENABLED is True
    assert cfg.MODEL.MaskDINO.BATO_ENABLED is True


@needs_reference
def test_authors_merged_config_loads_unchanged():
    cfg = new_cfg()
    cfg.merge_from_file(str(MERGED_YAML))  # raises KeyError on any unknown key
    merged = yaml.safe_load(MERGED_YAML.read_text())
    for key, value in flatten(merged):
        assert normalised(lookup(cfg, key)) == normalised(value), key


@needs_reference
def test_our_12ep_config_equals_the_authors_merged_config():
    cfg = new_cfg()
    cfg.merge_from_file(str(CONFIGS / "dimaskdino_r50_4scale_bs16_12ep.yaml"))
    merged = yaml.safe_load(MERGED_YAML.read_text())
    differences = [
        (key, normalised(lookup(cfg, key)), value)
        for key, value in flatten(merged)
        if normalised(lookup(cfg, key)) != normalised(value)
    ]
    assert differences == []
    assert cfg.MODEL.MaskDINO.DI_ENABLED and cfg.MODEL.MaskDINO.BATO_ENABLED


@pytest.mark.parametrize(
    "name, steps, max_iter",
    [
        ("dimaskdino_r50_4scale_bs16_12ep.yaml", [81125], 88500),
        ("dimaskdino_r50_4scale_bs16_24ep.yaml", [147500], 177000),
        ("dimaskdino_r50_4scale_bs16_50ep.yaml", [327778, 355092], 368750),
    ],
)
def test_schedules(name, steps, max_iter):
    cfg = new_cfg()
    cfg.merge_from_file(str(CONFIGS / name))
    assert list(cfg.SOLVER.STEPS) == steps
    assert cfg.SOLVER.MAX_ITER == max_iter
    assert cfg.MODEL.META_ARCHITECTURE == "MaskDINO"
    assert cfg.MODEL.MaskDINO.TRANSFORMER_DECODER_NAME == "DIMaskDINODecoder"
    assert cfg.MODEL.MaskDINO.NUM_OBJECT_QUERIES == 300
    assert cfg.MODEL.MaskDINO.INITIALIZE_BOX_TYPE == "mask2box"


def test_maskdino_baseline_configs_switch_di_and_bato_off():
    cfg = new_cfg()
    cfg.merge_from_file(str(CONFIGS / "maskdino_baseline" / "maskdino_r50_4scale_bs16_12ep.yaml"))
    assert not cfg.MODEL.MaskDINO.DI_ENABLED and not cfg.MODEL.MaskDINO.BATO_ENABLED
    assert cfg.SOLVER.MAX_ITER == 88500
    cfg = new_cfg()
    cfg.merge_from_file(str(CONFIGS / "maskdino_baseline" / "maskdino_R50_bs16_50ep_3s_dowsample1_2048.yaml"))
    assert cfg.MODEL.MaskDINO.TRANSFORMER_DECODER_NAME == "MaskDINODecoder"
    assert cfg.MODEL.MaskDINO.DEC_LAYERS == 9


def test_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  MaskDINO:\n    NOT_A_KEY: 1\n")
    with pytest.raises(KeyError, match="NOT_A_KEY"):
        new_cfg().merge_from_file(str(bad))


def test_misspelt_authors_key_is_read_in_config_only():
    """TEST_FOUCUS_ON_BOX (sic) reaches the model as focus_on_box, through dimaskdino.config."""
    import pathlib

    from dimaskdino.config import score_from_box_only

    cfg = get_cfg()
    add_dimaskdino_config(cfg)
    cfg.MODEL.MaskDINO.TEST.TEST_FOUCUS_ON_BOX = True
    assert score_from_box_only(cfg) is True
    package = pathlib.Path(__file__).resolve().parents[1] / "dimaskdino"
    readers = [p.relative_to(package).as_posix() for p in package.rglob("*.py") if "FOUCUS" in p.read_text()]
    assert readers == ["config.py"]
