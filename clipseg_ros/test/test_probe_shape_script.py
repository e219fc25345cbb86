"""
scripts/probe_shape.py, the linear probes behind the model card's account of why the miniature
model misses objects whose colour another object shares.

The script is loaded from the checkout (``checkout_scripts``), so the tests keep using the
installed package; the model is the installed miniature model.
"""

from pathlib import Path

from checkout_scripts import load_script
from clipseg_ros.core.model_loading import resolve_package_url
import numpy as np
import pytest

MINI_MODEL = Path(resolve_package_url('package://clipseg_ros/models/clipseg_shapes_mini'))


@pytest.fixture(scope='module')
def prober():
    return load_script('probe_shape')


def test_the_probe_reads_a_label_that_the_features_hold(prober) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(4, size=400)
    informative = np.eye(4)[labels] + rng.normal(0.0, 0.3, (400, 4))
    noise = rng.normal(0.0, 1.0, (400, 4))
    features = np.concatenate([informative, noise], axis=1).astype(np.float32)
    assert prober.linear_probe(features[:300], labels[:300], features[300:], labels[300:],
                               4) > 0.9
    # Features without the label score near chance (a quarter) on scenes it did not fit.
    assert prober.linear_probe(noise[:300].astype(np.float32), labels[:300],
                               noise[300:].astype(np.float32), labels[300:], 4) < 0.45


def test_the_miniature_model_encodes_the_colour_of_each_object_patch(prober) -> None:
    # Colour is a property of each patch's own pixels, which the trained model uses: if the
    # ground-truth labels were taken from the wrong patches (a flip, a transposed grid) this
    # accuracy would fall towards a quarter.
    result = prober.probe(MINI_MODEL, scenes=12, width=320, height=240)
    assert result['patches']['fit'] > 50 and result['patches']['scored'] > 20
    assert len(result['layers']) == 5  # the embeddings and the four encoder layers
    for entry in result['layers']:
        assert entry['colour'] > 0.9, entry
        assert 0.0 <= entry['shape'] <= 1.0
    assert 0.25 <= result['majority']['shape'] <= 1.0
    assert 0.25 <= result['majority']['colour'] <= 1.0
