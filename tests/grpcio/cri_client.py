"""A CRI client berth did not write: Python grpcio with a default channel.

Usage: cri_client.py SOCKET PROTO [POD_CONFIG_JSON]

The stubs are generated at run time by grpcio-tools from PROTO (the CRI
api.proto that the k8s-cri crate ships); nothing generated is committed.
The channel is `grpc.insecure_channel("unix:SOCKET")` with no options, so
grpcio picks the `:authority` itself, as every user of it does.

Prints one line per step; exits non-zero on the first failed call.
"""

import importlib
import json
import os
import sys
import tempfile

import grpc
from google.protobuf import json_format
from grpc_tools import protoc


def load_stubs(proto):
    out = tempfile.mkdtemp(prefix="berth-grpcio-")
    include, name = os.path.split(os.path.abspath(proto))
    rc = protoc.main(
        ["protoc", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", name]
    )
    if rc != 0:
        sys.exit(f"protoc failed on {proto}: {rc}")
    sys.path.insert(0, out)
    module = name[: -len(".proto")]
    return importlib.import_module(f"{module}_pb2"), importlib.import_module(f"{module}_pb2_grpc")


def main():
    socket, proto = sys.argv[1], sys.argv[2]
    pod_config = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    pb, stubs = load_stubs(proto)
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        runtime = stubs.RuntimeServiceStub(channel)
        images = stubs.ImageServiceStub(channel)
        v = runtime.Version(pb.VersionRequest(version="v1"), timeout=30)
        print(f"version {v.runtime_name} {v.runtime_api_version}", flush=True)
        listed = images.ListImages(pb.ListImagesRequest(), timeout=30)
        print(f"images {len(listed.images)}", flush=True)
        if pod_config is None:
            return
        config = json_format.ParseDict(pod_config, pb.PodSandboxConfig())
        pod = runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
        print(f"run {pod}", flush=True)
        status = runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=30)
        print(f"status {pb.PodSandboxState.Name(status.status.state)} {status.status.network.ip}", flush=True)
        pods = runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
        print(f"listed {' '.join(p.id for p in pods)}", flush=True)
        runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        status = runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=30)
        print(f"stopped {pb.PodSandboxState.Name(status.status.state)}", flush=True)
        runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        try:
            runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=30)
            print("removed but still there", flush=True)
        except grpc.RpcError as e:
            print(f"removed {e.code().name}", flush=True)


if __name__ == "__main__":
    main()
