import hashlib


def test_monolithic_push_then_pull(trow):
    data = b"hello world"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = trow.client.post(f"/v2/a/b/blobs/uploads/?digest={digest}", body=data)
    assert r.code == 201, r.body
    assert r.header("Location") == f"/v2/a/b/blobs/{digest}"
    r = trow.client.get(f"/v2/a/b/blobs/{digest}")
    assert r.code == 200 and r.body == data
    r = trow.client.head(f"/v2/a/b/blobs/{digest}")
    assert r.code == 200 and r.body == b"" and r.header("Content-Length") == str(len(data))
