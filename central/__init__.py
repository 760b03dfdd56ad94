"""The reference central consumer of the agents' upstream records (not part of the agent's runtime).

It shows, and the tests prove, what the other end of the upstream link must do for the contract to
hold: take every robot's records from the site broker through the shared subscription, store each
once under (agent, stream, seq), and acknowledge per stream only the contiguous prefix it has
committed, so an agent prunes nothing the centre does not hold.

- `records.py`: one message checked with the agent's own envelope and rules (agent/sync), the
  signature against the robot's pinned device key;
- `device_keys.py`: the pinned device keys, a file the central team keeps (enrolment);
- `ledger.py`: the SQLite store and the contiguous prefix;
- `errors.py`: the consumer's own codes (the rest are the agent's UPSTREAM_* codes);
- `consumer.py`: the MQTT side and the command line (`python -m central.consumer --help`).
"""
