"""
The QoS of the node's inputs (camera image, depth, camera_info): subscriptions that follow
their publishers.

``qos_reliability: auto`` subscribes reliable when every publisher of the topic offers
reliable, best effort otherwise (and while there is none: best effort matches either kind).
Every GRAPH_POLL_S the subscription re-reads the topic's publishers from the node's graph cache
(a local read, no network traffic; rclpy has no per-topic graph callback). When the answer
changes it creates the new subscription first and keeps the old one until the new one has
matched a publisher and a poll has passed, then destroys it. Meanwhile both deliver and a
sample already delivered (same publisher and sequence number: the other subscription's copy)
is passed over: the publisher's side matches the new subscription after the new one sees the
publisher, and a message sent in between reaches only the old one. Both feed the same
callback, so the camera's scheduler slot, counters and depth pairing never notice. Under auto,
the incompatible-QoS event a new best-effort publisher raises against a reliable subscription
triggers that re-reading at once. A reliability forced by the user that a publisher cannot
serve is reported once per topic, with the fix, from that event, and counted for /diagnostics.
"""

from collections import deque
from collections.abc import Callable
from typing import Any

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription

GRAPH_POLL_S = 1.0
RELIABILITY_MODES = ('auto', 'best_effort', 'reliable')
# rclpy passes a callback of two parameters each sample's publisher and sequence number (Jazzy
# and later): what tells the two subscriptions' copies of one sample apart during a swap.
_MESSAGE_INFO = hasattr(Subscription, 'CallbackType')
# Samples remembered during a swap to pass over the second copy: a few frames' worth.
SWAP_RECENT_MESSAGES = 16
_NAMES = {ReliabilityPolicy.RELIABLE: 'reliable', ReliabilityPolicy.BEST_EFFORT: 'best_effort'}


def input_qos(reliability: ReliabilityPolicy) -> QoSProfile:
    """An input subscription's QoS: the newest message only, with this reliability."""
    return QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability)


def reliability_for(mode: str, offered: list[ReliabilityPolicy]) -> ReliabilityPolicy:
    """The reliability to subscribe with, given ``qos_reliability`` and the publishers' own."""
    if mode == 'reliable':
        return ReliabilityPolicy.RELIABLE
    if mode == 'auto' and offered and all(p == ReliabilityPolicy.RELIABLE for p in offered):
        return ReliabilityPolicy.RELIABLE
    return ReliabilityPolicy.BEST_EFFORT


def _policy_name(kind: Any) -> str:
    try:
        return QoSPolicyKind(int(kind)).name.lower()
    except (TypeError, ValueError):
        return str(kind)


class FollowingSubscription:
    """One input topic's subscription, its reliability chosen by ``mode`` (RELIABILITY_MODES)."""

    def __init__(self, node, message_type, topic: str, callback: Callable[[Any], None],
                 mode: str, callback_group) -> None:
        self._node = node
        self._message_type = message_type
        self._callback = callback
        self._callback_group = callback_group
        self.mode = mode
        self.topic = node.resolve_topic_name(topic)
        self.publisher_count = 0
        self.incompatible_events = 0
        self._reported = False
        self._retiring = None  # the subscription being replaced, still delivering
        self._retire_next_poll = False
        self._recent: deque = deque(maxlen=SWAP_RECENT_MESSAGES)  # keys delivered in a swap
        self.reliability = reliability_for(mode, self._offered())
        self.subscription = self._subscribe(self.reliability)
        self._timer = node.create_timer(GRAPH_POLL_S, self.refresh,
                                        callback_group=callback_group)

    @property
    def reliability_name(self) -> str:
        return _NAMES.get(self.reliability, str(self.reliability))

    def _offered(self) -> list[ReliabilityPolicy]:
        publishers = self._node.get_publishers_info_by_topic(self.topic)
        self.publisher_count = len(publishers)
        return [info.qos_profile.reliability for info in publishers]

    def _subscribe(self, reliability: ReliabilityPolicy):
        subscription = None

        def deliver_once(msg, info) -> None:
            if self._retiring is None:
                if subscription is self.subscription:
                    self._callback(msg)
                return
            # A swap: whichever subscription has a sample first passes it on, once. A sample
            # is its publisher and its publication (the header's stamp is not: a camera may
            # stamp every image 0).
            key = (repr(info.get('publisher_gid')), info.get('publication_sequence_number'),
                   info.get('source_timestamp'))
            if key in self._recent:
                return
            self._recent.append(key)
            self._callback(msg)

        def deliver_in_charge(msg) -> None:
            # Without message info (rclpy before Jazzy), only the subscription in charge
            # passes messages on; a sample between the two sides' matches may be lost.
            if subscription is self.subscription or (
                    subscription is self._retiring and self.subscription is not None and
                    self.subscription.get_publisher_count() == 0):
                self._callback(msg)

        subscription = self._node.create_subscription(
            self._message_type, self.topic,
            deliver_once if _MESSAGE_INFO else deliver_in_charge, input_qos(reliability),
            callback_group=self._callback_group,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible))
        return subscription

    def refresh(self) -> None:
        """Re-read the publishers and follow them (timer; never raises into the executor)."""
        try:
            if self._retiring is not None and self.subscription.get_publisher_count() > 0:
                # One more poll before the old one goes: the publisher's side of the match.
                if self._retire_next_poll:
                    self._node.destroy_subscription(self._retiring)
                    self._retiring, self._retire_next_poll = None, False
                    self._recent.clear()
                else:
                    self._retire_next_poll = True
            wanted = reliability_for(self.mode, self._offered())
            if wanted == self.reliability or self._retiring is not None:
                return
            replacement = self._subscribe(wanted)  # created before the old one goes
            self._retiring, self.subscription = self.subscription, replacement
            self.reliability = wanted
            self._node.get_logger().info(
                f'{self.topic}: {self.publisher_count} publisher(s); subscribing '
                f'{self.reliability_name} (qos_reliability auto)')
        except Exception as error:  # noqa: B902 - a timer that raises ends the executor's spin
            self._node.get_logger().warning(
                f'{self.topic}: publishers not read: {type(error).__name__}: {error}')

    def _on_incompatible(self, info) -> None:
        if self.mode == 'auto':  # a new publisher of the other kind: follow it now
            self.refresh()
            return
        self.incompatible_events += max(int(getattr(info, 'total_count_change', 1)), 1)
        if self._reported:
            return
        self._reported = True
        self._node.get_logger().warning(
            f'{self.topic}: a publisher\'s QoS is incompatible with this subscription '
            f'({_policy_name(getattr(info, "last_policy_kind", "?"))}), so none of its '
            f'messages arrive; qos_reliability is {self.mode}: set it to auto (follows the '
            'publishers) or best_effort (matches every publisher)')

    def destroy(self) -> None:
        self._node.destroy_timer(self._timer)
        for subscription in (self.subscription, self._retiring):
            if subscription is not None:
                self._node.destroy_subscription(subscription)
        self.subscription = self._retiring = None
