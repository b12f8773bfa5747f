"""A secondary-capture key image by STOW-RS: a request of more than 1 MB (sent chunked by dicomweb-client)
reaches a real Orthanc (DICOMweb plugin) and is filed in the original study with the SR and KOS."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from edge_agent.results.capture import SECONDARY_CAPTURE
from edge_agent.results.delivery import PacsDelivery
from edge_agent.results.destination import parse_destination
from edge_agent.results.sender import SenderSettings
from edge_agent.results.study import read_study_header
from pacs_helpers import ALGORITHMS, all_done, head_series, positive_result
from edge_agent.testing.wait import wait_value as wait_for
from edge_agent.testing import orthanc as orthanc_support

needs_dicomweb = pytest.mark.skipif(not (orthanc_support.available() and orthanc_support.dicomweb_plugin()),
                                    reason="Orthanc with its DICOMweb plugin (orthanc-dicomweb) is not installed")


@needs_dicomweb
def test_key_image_over_stow_lands_in_the_study(tmp_path):
    series = head_series(tmp_path / "series")
    orthanc = orthanc_support.Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    try:
        orthanc.upload(series)
        [study_id] = orthanc.get("/studies")
        pacs = PacsDelivery(tmp_path / "pacs.sqlite3", [parse_destination(orthanc.dicomweb_root)],
                            SenderSettings(retry_min=0.2, retry_max=0.5, timeout=10.0), site="s", device="d",
                            secondary_capture=True)
        result = positive_result(series)
        key = result["findings"][0]["key_slices"][0]["sop_instance_uid"]
        rng = np.random.default_rng(3)
        image = rng.integers(0, 256, (600, 600), dtype=np.uint8)   # noise, 600 px: a 1.3 MB picture
        pacs.start()
        try:
            new = pacs.submit(result, read_study_header(series[0]), ALGORITHMS, "HEAD",
                              key_images={"ich": {"sop_instance_uid": key, "image": image, "boxes": [(10, 10, 40, 40)],
                                                  "orientation": [1, 0, 0, 0, 1, 0]}})
            assert len(new) == 3
            wait_for(lambda: all_done(tmp_path), 60, "STOW-RS delivery of SR, KOS and key image")
        finally:
            pacs.stop()
        by_sop = orthanc.instances_by_sop()
        [sc] = [t for t in by_sop.values() if t["SOPClassUID"] == SECONDARY_CAPTURE]
        assert sc["SOPInstanceUID"] in new and int(sc["Rows"]) * int(sc["Columns"]) * 3 > 1 << 20   # > 1 MB
        assert orthanc.get(f"/instances/{sc['_id']}/study")["ID"] == study_id
        assert sc["StudyInstanceUID"] == pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID
    finally:
        orthanc.stop()
