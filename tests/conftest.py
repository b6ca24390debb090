import torch

# One thread: the small models and tensors here run fastest and steadiest that way, even when
# the other core is busy with a notebook worker.
torch.set_num_threads(1)


# CI never skips the reference-library cross-checks: with QEDU_REQUIRE_EXTRAS=1 (set by .ci/run),
# pytest.importorskip fails instead of skipping when an optional package is missing.
import os  # noqa: E402

import pytest  # noqa: E402

if os.environ.get("QEDU_REQUIRE_EXTRAS") == "1":
    _importorskip = pytest.importorskip

    def _import_or_fail(modname, *args, **kwargs):
        try:
            return _importorskip(modname, *args, **kwargs)
        except pytest.skip.Exception as err:
            pytest.fail(f"QEDU_REQUIRE_EXTRAS=1 but {modname} is missing ({err}). Install the extras: "
                        "`make test` does (pip install -e '.[test,browser,ref,teacher]').", pytrace=False)

    pytest.importorskip = _import_or_fail
