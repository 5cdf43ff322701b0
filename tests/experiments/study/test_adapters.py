"""A host of a multi-host run builds only its rows of each batch: they must be exactly those rows of the whole batch
(model inputs), with every row's labels, valid flags and ids."""

import numpy as np

from configs.study import get_config
from experiments.study import adapters
from tests.experiments import tiny_reference


def test_rows_of_a_batch_are_those_of_the_whole_batch(tmp_path):
    data_dir = tmp_path / "tfds"
    cfg = get_config(f"local,checkpoint={tiny_reference.build(tmp_path / 'ref')},data_dir={data_dir},"
                     "dataset_config=tiny,buckets=2+4,batch_size=8")
    model = adapters.load_model(cfg)
    dataset = adapters.ensure_dataset("synthetic_prosody", "tiny", str(data_dir), "")
    items = adapters.read_items(cfg, model, dataset, "test", 0, cfg.seed)
    whole = list(adapters.batches(model, items, cfg))
    assert len(whole) > 1 and any(not b["valid"].all() for b in whole)  # padding rows among the shares
    for rows in (slice(0, 4), slice(4, 8), slice(2, 4)):
        part = list(adapters.batches(model, items, cfg, rows))
        assert len(part) == len(whole)
        for mine, full in zip(part, whole, strict=True):
            assert mine.keys() == full.keys()
            for key in adapters.MODEL_INPUTS_EXCLUDED:
                np.testing.assert_array_equal(mine[key], full[key])
            for key in adapters.model_inputs(full):
                np.testing.assert_array_equal(mine[key], full[key][rows], err_msg=key)
