"""Every output message stays what it was: the recorded frames replayed against their hashes."""

import json

from output_record import HASHES_PATH, record


def test_every_published_message_matches_the_recorded_reference(tiny_model_dir):
    """Mask, confidence, overlay, segmentation with instances, instances image, points and
    markers of clean, ragged, covering and speckled results, with and without depth, over
    sequences that start tracks: each message's fields as recorded before the speed work."""
    reference = json.loads(HASHES_PATH.read_text())
    replayed = record(tiny_model_dir)
    topics = {key.split('/')[2] for key in replayed}
    assert topics == {'mask', 'confidence', 'overlay', 'segmentation', 'instances', 'points',
                      'markers'}
    assert sorted(replayed) == sorted(reference), 'a message appeared or went missing'
    changed = sorted(key for key in reference if replayed[key] != reference[key])
    assert not changed, f'{len(changed)} messages changed, first: {changed[:8]}'
