"""The built-in mock provider's contract (see the gateway spec), shared by the tests.

Reply text: "Hello from the Lattice mock provider. You said: <first 16 words of the
last user message>". A token is a whitespace-separated word: prompt tokens = words in
all message text, completion tokens = words in the reply.
"""

from __future__ import annotations

MOCK_PREFIX = "Hello from the Lattice mock provider. You said:"


def mock_reply(last_user_message: str) -> str:
    """Full (untruncated) reply text of the built-in mock provider."""
    return " ".join([MOCK_PREFIX, *last_user_message.split()[:16]])


def words(text: str) -> int:
    """Token count under the mock's rule: whitespace-separated words."""
    return len(text.split())


# A prompt longer than 16 words, so the "first 16 words" rule is exercised.
LONG_PROMPT = (
    "please  repeat after me one two three four five six seven eight nine ten "
    "eleven twelve thirteen fourteen fifteen sixteen"
)
SHORT_PROMPT = "Say hello to the SDK suite"

# Larger than the gateway's max_body_bytes (1 MiB) -> 413.
OVERSIZED_TEXT = "x" * (2 * 1024 * 1024)
