"""The array operations (GPU kernel launches) of one training step, counted on array-api-strict's Device("device1")
(bench/launch_count.py wraps every namespace function and every operator of the array class).

A 12-block ViT (width 64, batch 4) with AdamW and global-norm clipping: at most 3,100 operations per step (7,238
before the flat buffers of issue 29), of which at most 50 for the clipping and the optimiser update together
(gathering the gradients into their flat buffer is counted apart: one reshape per parameter and one concat).
"""
import numpy as np
import pytest

pytest.importorskip("array_api_strict", reason="array-api-strict is in the [test] extra")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def twelve_blocks():
    import scratchvit as sv

    return sv.get_config("ViT-Ti_16", image_size=32, patch_size=8, hidden_size=64, num_layers=12, num_heads=2,
                         mlp_dim=256, num_classes=10)


def test_the_counter_counts_functions_operators_and_parts():
    """The counter sees namespace calls, operators (also reflected and in-place), indexing and transposes, once
    each (not array-api-strict's internal calls), charged to the part that makes them; it restores everything."""
    import array_api_strict as xs
    from strict_device import DEVICE

    from bench.launch_count import OpCounter

    a = xs.ones((2, 3), device=DEVICE)
    real = xs.sum

    class Part:
        @staticmethod
        def run(x):
            y = xs.sum(x * 2.0, axis=0)  # sum, mul
            y += 1.0  # iadd
            return 3.0 - y[0] + x.mT[0, 0]  # rsub, getitem, add, mT, getitem

    with OpCounter() as c:
        c.charge(Part, "run", "update")
        Part.run(a)
        xs.reshape(a, (3, 2))
    assert c.counts == {"update": 8, "other": 1}
    assert c.by_op["update", "rsub"] == 1 and c.by_op["update", "mT"] == 1 and c.by_op["other", "reshape"] == 1
    assert xs.sum is real and "run" in Part.__dict__ and not hasattr(Part.run, "__wrapped__")


@pytest.mark.parametrize("opt_name", ["adamw", "sgd"])
def test_a_training_step_stays_within_its_operation_budget(opt_name):
    from bench.launch_count import count_model

    counts, by_op = count_model(twelve_blocks(), batch=4, optimizer=opt_name, grad_clip=1.0)
    assert counts["total"] <= 3100, counts
    assert counts["clipping"] + counts["update"] <= 50, counts
    assert counts["clipping"] > 0 and counts["update"] > 0  # both ran, and were seen
    # one copy of each of the 12 * 16 + 8 gradients into the flat buffer, not a pass per array in the optimiser
    assert counts["gather"] <= 210 and by_op["gather", "concat"] == 1, counts
    assert np.all([n < 30 for (part, _), n in by_op.items() if part in ("clipping", "update")])
