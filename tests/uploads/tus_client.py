"""tuspy (the tus project's Python client, not our code) driving /v1/uploads for tests/it/uploads.rs.

Usage: tus_client.py ENDPOINT TOKEN FILE URL_FILE [--resume-from PATH] [--chunk BYTES]
       [--checksum] [--meta KEY=VALUE ...]
Writes the upload's URL to URL_FILE once it is set up (created, or resumed from the URL
in PATH after asking its offset); prints "done OFFSET JOB" at the end, JOB being the
Mp4tomp3-Job header of the last answer.
"""
import argparse
import hashlib
import sys

from tusclient import client
from tusclient.uploader import Uploader


class Sha256Uploader(Uploader):
    CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("token")
    p.add_argument("file")
    p.add_argument("url_file")
    p.add_argument("--resume-from")
    p.add_argument("--chunk", type=int, default=8 << 20)
    p.add_argument("--checksum", action="store_true")
    p.add_argument("--meta", action="append", default=[])
    a = p.parse_args()
    tus = client.TusClient(a.endpoint, headers={"Authorization": "Bearer " + a.token})
    metadata = dict(m.split("=", 1) for m in a.meta)
    url = open(a.resume_from).read().strip() if a.resume_from else None
    up = Sha256Uploader(a.file, client=tus, url=url, chunk_size=a.chunk, metadata=metadata,
                        upload_checksum=a.checksum)
    if not up.url:
        up.set_url(up.create_url())
        up.offset = 0
    with open(a.url_file, "w") as f:
        f.write(up.url)
    while up.offset < up.get_file_size():
        up.upload_chunk()
    job = up.request.response_headers.get("mp4tomp3-job", "") if up.request else ""
    print("done", up.offset, job, flush=True)


if __name__ == "__main__":
    sys.exit(main())
