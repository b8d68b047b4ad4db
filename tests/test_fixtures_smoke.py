import json


def test_tiny_checkpoints_are_written(tiny_hf_checkpoint, tiny_timm_checkpoint, tiny_image_folder):
    assert (tiny_hf_checkpoint / "config.json").is_file()
    cfg = json.loads((tiny_timm_checkpoint / "config.json").read_text())
    assert cfg["architecture"] == "test_efficientnet" and cfg["model_args"]["num_classes"] == 7
    assert len(list((tiny_image_folder / "train" / "cat").glob("*.png"))) == 12
