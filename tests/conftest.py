"""Fixtures every end-to-end test shares: strict albumentations warnings, and a temporary outputs folder."""
import os, warnings

import pytest

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')


@pytest.fixture(autouse=True)
def strict_albumentations():
    "Albumentations warnings fail the tests: those raised inside it, and the argument check it attributes to our code."
    with warnings.catch_warnings():
        warnings.filterwarnings('error', module='albumentations')
        # an argument albumentations 2 does not take (renamed, removed: e.g. GaussNoise's var_limit) warns with
        # stacklevel=2, so the warning is attributed to the caller (maskclf.augment) and the module filter never sees it
        warnings.filterwarnings('error', message=r"Argument\(s\) .* not valid for transform")
        yield


@pytest.fixture(scope='module')
def outputs_root(tmp_path_factory):
    "A temporary MASKCLF_OUTPUTS (runs, crop caches, demo sets) for one test module; restored afterwards."
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp('outputs'); mp.setenv('MASKCLF_OUTPUTS', str(d))
    yield d
    mp.undo()


@pytest.fixture(scope='module')
def outputs(outputs_root):
    "`outputs_root` and a 12-person demo set made inside it: (outputs folder, data folder as str)."
    from maskclf.demo import demo_data_dir
    return outputs_root, str(demo_data_dir(n_people=12))
