"Face detection on real photos: recall per mask state and stable crops of one person (skipped without ../shared)."
import os, time, warnings
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
import numpy as np
import pandas as pd
import pytest

from maskclf.core import real_data, MASK_NAMES
from maskclf.crop import detect_faces, complete_boxes, box_hits, person_spread, crop_cache, crop_window

warnings.filterwarnings('error', module='albumentations')


def _read(name):
    csv = real_data(name)
    if csv is None: pytest.skip(f'real_data({name!r}) is absent (../shared not mounted)')
    from maskclf.data import read_labels_csv
    return read_labels_csv(csv)


def test_recall_per_mask_state():
    "MTCNN with `DETECTOR` finds >= 95% of annotated faces in every mask state (fallbacks never count)."
    masks = _read('masks')
    t = time.time(); found = detect_faces(masks.path, device='cpu', progress=False)
    rate = len(masks) / (time.time() - t)
    recall = pd.Series(box_hits(found, masks)).groupby(masks['mask'].map(dict(enumerate(MASK_NAMES))).to_numpy()).mean()
    print(f'recall {recall.round(3).to_dict()} at {rate:.1f} images/s')
    assert set(recall.index) == set(MASK_NAMES)
    assert (recall >= 0.95).all(), recall.to_dict()


def test_selfies_stable_per_person():
    "The same person's boxes barely move across mask states."
    selfies = _read('selfies')
    boxes = complete_boxes(detect_faces(selfies.path, device='cpu', progress=False), selfies.person)
    assert boxes.source.eq('detector').mean() >= 0.9
    spread = person_spread(boxes, selfies.person)
    assert spread.centre.max() < 0.08, spread
    assert spread.size_ratio.max() < 1.5, spread


def test_cache_on_real_photos(tmp_path):
    "Crops of real photos come back as a read-only memmap aligned with the table, and are served again from the cache."
    masks = _read('masks').head(6)
    c = crop_cache(masks, size=(64, 48), cache_dir=tmp_path, progress=False)
    assert c.shape == (6, 64, 48, 3) and c.dtype == np.uint8 and not c.flags.writeable
    assert (crop_cache(masks, size=(64, 48), cache_dir=tmp_path, progress=False) == c).all()
    assert len(list(tmp_path.glob('crops-*/crops.npy'))) == 1 and not list(tmp_path.glob('.*'))
