"""Test and benchmark tooling — the one harness of tests/ and scripts/; the agent itself never imports it.

It ships with the package so that the benchmark and fault-injection scripts run from an installed
agent too. Nothing under ``edge_agent/`` outside this package may import it (tests/test_harness.py
checks that), and importing this package imports nothing heavy: each submodule imports what it needs
(paho, onnx, psutil, pytest only where a function needs it).

| module | what |
|---|---|
| ``mosquitto`` | a real Mosquitto process (plain, TLS, mTLS, passwords, ACL) and a throw-away PKI |
| ``orthanc`` | a real Orthanc PACS (DICOM, REST, DICOMweb, TLS) |
| ``dcmtk`` | DCMTK's command-line tools (not pynetdicom's same-named scripts); an SR checked by dsrdump and dciodvfy |
| ``net`` | a free local port, host and port of an MQTT URL |
| ``processes`` | stop a child process: SIGTERM, a grace period, SIGKILL |
| ``proxy`` | ``TcpProxy``: a local TCP proxy that can hold requests or answers (a network failing mid-send) |
| ``wait`` | the one poll-until-true helper (``wait_until`` → bool, ``wait`` → AssertionError) |
| ``mqtt`` | ``Recorder`` (every message, schema-checked, with waits) and ``Consumer`` (receipts) |
| ``agent`` | ``edge-agent run`` as a real process; read-only looks into its state folder |
| ``alerts`` | valid alert payloads and fast publisher settings |
| ``models`` | tiny real ONNX models and manifests, with their numpy reference |
| ``volumes`` | small deterministic CT-like volumes and DICOM series |
| ``outputs`` | ``RecordingOutputs``: a stand-in for the pipeline's outbox, ledger and metrics |
| ``fake_trt`` | fakes of ``tensorrt`` and ``pycuda.driver`` for machines without a GPU |
| ``cuda_host`` | CUDA kernel source compiled and run on the CPU (an emulation) |
| ``disk`` | a real small tmpfs to fill (needs root) |

The scenario replay (phantom series rendered once, replayed with fresh UIDs) is not here: it sits next
to the simulator, in :mod:`edge_agent.service.replay`.
"""
