"""Docker image references: the distribution/reference grammar, with messages that name the bad part.

The tables follow the cases of distribution/reference's own tests (reference_test.go, regexp_test.go).
"""

from __future__ import annotations

import pytest

from provisioner import errors, imageref, settings

SHA256 = "sha256:" + "f" * 64
SHA512 = "sha512:" + "f" * 128


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        pytest.param("nginx", imageref.ImageRef(None, "nginx"), id="bare-name"),
        pytest.param("a", imageref.ImageRef(None, "a"), id="one-letter"),
        pytest.param("test_com", imageref.ImageRef(None, "test_com"), id="underscore"),
        pytest.param("test.com:tag", imageref.ImageRef(None, "test.com", "tag"), id="dotted-name-tag"),
        pytest.param("test.com:5000", imageref.ImageRef(None, "test.com", "5000"), id="numeric-tag"),
        pytest.param("lowercase:Uppercase", imageref.ImageRef(None, "lowercase", "Uppercase"), id="tag-case"),
        pytest.param("foo__bar--baz", imageref.ImageRef(None, "foo__bar--baz"), id="separators"),
        pytest.param(
            "vllm/vllm-openai:v0.6.4", imageref.ImageRef(None, "vllm/vllm-openai", "v0.6.4"), id="hub"
        ),
        pytest.param(
            "docker.io/library/nginx:1.25",
            imageref.ImageRef("docker.io", "library/nginx", "1.25"),
            id="docker-io",
        ),
        pytest.param("test:5000/repo", imageref.ImageRef("test:5000", "repo"), id="registry-port"),
        pytest.param("test:5000/repo:tag", imageref.ImageRef("test:5000", "repo", "tag"), id="port-and-tag"),
        pytest.param(
            f"test:5000/repo:tag@{SHA256}", imageref.ImageRef("test:5000", "repo", "tag", SHA256), id="all"
        ),
        pytest.param(
            f"ghcr.io/org/app@{SHA256}", imageref.ImageRef("ghcr.io", "org/app", None, SHA256), id="dig"
        ),
        pytest.param(
            f"xn--7o8h.com/myimage:xn--7o8h.com@{SHA512}",
            imageref.ImageRef("xn--7o8h.com", "myimage", "xn--7o8h.com", SHA512),
            id="punycode-sha512",
        ),
        pytest.param(
            "b.gcr.io/test.example.com/my-app:test.example.com",
            imageref.ImageRef("b.gcr.io", "test.example.com/my-app", "test.example.com"),
            id="dotted-path",
        ),
        pytest.param(
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
            imageref.ImageRef("sub-dom1.foo.com", "bar/baz/quux", "some-long-tag"),
            id="deep-path",
        ),
        pytest.param("192.168.1.1:5000/repo", imageref.ImageRef("192.168.1.1:5000", "repo"), id="ipv4-port"),
        pytest.param("[2001:db8::1]:5000/repo", imageref.ImageRef("[2001:db8::1]:5000", "repo"), id="ipv6"),
        pytest.param("localhost/repo:1", imageref.ImageRef("localhost", "repo", "1"), id="localhost"),
        pytest.param("EXAMPLE.com/repo", imageref.ImageRef("EXAMPLE.com", "repo"), id="domain-upper"),
        pytest.param("a" * 255, imageref.ImageRef(None, "a" * 255), id="name-255"),
        pytest.param("repo:" + "t" * 128, imageref.ImageRef(None, "repo", "t" * 128), id="tag-128"),
    ],
)
def test_valid_references_parse(reference: str, expected: imageref.ImageRef) -> None:
    """A reference the grammar accepts parses into registry, path, tag and digest, as docker splits it."""
    assert imageref.parse(reference) == expected
    assert imageref.validate(reference) == reference


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        pytest.param("https://docker.io/foo:1", "must not have a URL scheme", id="https-scheme"),
        pytest.param("docker://foo", "must not have a URL scheme", id="docker-scheme"),
        pytest.param("", "is empty", id="empty"),
        pytest.param(" nginx", "has spaces", id="leading-space"),
        pytest.param("nginx:1 ", "has spaces", id="trailing-space"),
        pytest.param("ngïnx", "outside printable ASCII", id="non-ascii"),
        pytest.param("nginx\n", "outside printable ASCII", id="newline"),
        pytest.param(":justtag", "empty component", id="only-tag"),
        pytest.param(f"@{SHA256}", "empty component", id="only-digest"),
        pytest.param("Uppercase:tag", "must be lower case", id="upper-name"),
        pytest.param("test:5000/Uppercase/lowercase:tag", "must be lower case", id="upper-path"),
        pytest.param("aa/asdf$$^/aa", "path component 'asdf$$^'", id="symbols"),
        pytest.param("-foo", "path component '-foo'", id="leading-dash"),
        pytest.param("foo-", "path component 'foo-'", id="trailing-dash"),
        pytest.param("foo___bar", "path component 'foo___bar'", id="three-underscores"),
        pytest.param("foo..bar", "path component 'foo..bar'", id="two-dots"),
        pytest.param("foo//bar", "empty component", id="double-slash"),
        pytest.param("foo/", "empty component", id="trailing-slash"),
        pytest.param("foo:", "tag ''", id="empty-tag"),
        pytest.param("foo:-tag", "tag '-tag'", id="tag-dash"),
        pytest.param("foo:tag:tag2", "path component 'foo:tag'", id="two-tags"),
        pytest.param("repo:" + "t" * 129, "tag 'ttt", id="tag-129"),
        pytest.param("a" * 256, "256 characters long", id="name-256"),
        pytest.param("foo@", "digest ''", id="empty-digest"),
        pytest.param("foo@sha256:abc", "digest 'sha256:abc'", id="short-hex"),
        pytest.param("foo@sha256:" + "f" * 34, "sha256 takes 64", id="sha256-length"),
        pytest.param("foo@sha256:" + "F" * 64, "lower-case hex", id="sha256-upper"),
        pytest.param("foo@" + "f" * 64, "must be algorithm:hex", id="no-algorithm"),
        pytest.param("exa_mple.com/repo", "registry 'exa_mple.com'", id="domain-underscore"),
        pytest.param("-example.com/repo", "registry '-example.com'", id="domain-dash"),
        pytest.param("[fe80::1%eth0]:5000/repo", "registry '[fe80::1%eth0]:5000'", id="ipv6-zone"),
        pytest.param("example.com:port/repo", "registry 'example.com:port'", id="port-word"),
    ],
)
def test_invalid_references_are_rejected_naming_the_part(reference: str, message: str) -> None:
    """A reference outside the grammar raises ValueError whose message names the bad part."""
    with pytest.raises(ValueError) as caught:
        imageref.validate(reference)
    assert message in str(caught.value)


def test_scheme_message_shows_the_reference_to_write() -> None:
    """The URL-scheme message suggests the same reference without the scheme."""
    with pytest.raises(ValueError, match=r"\(write docker\.io/foo:1\)"):
        imageref.parse("https://docker.io/foo:1")


def test_settings_reject_a_url_as_the_template_image(env: pytest.MonkeyPatch) -> None:
    """VAST_TEMPLATE_IMAGE=https://docker.io/foo:1 is a configuration error naming the variable."""
    env.setenv("VAST_TEMPLATE_IMAGE", "https://docker.io/foo:1")
    with pytest.raises(errors.ConfigError) as caught:
        settings.load_settings()
    assert caught.value.variable == "VAST_TEMPLATE_IMAGE"
    assert "must not have a URL scheme" in caught.value.problem
