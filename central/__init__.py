"""The reference central consumer of the agents' upstream records (not part of the agent's runtime).

It shows, and the tests prove, what the other end of the upstream link must do for the contract to
hold: take every robot's records from the site broker through the shared subscription, store each
once under (agent, stream, seq), and acknowledge per stream only the contiguous prefix it has
committed, so an agent prunes nothing the centre does not hold.

- `records.py`: the record envelope, decoded and checked, and the `verify` hook for signatures;
- `ledger.py`: the SQLite store and the contiguous prefix;
- `consumer.py`: the MQTT side and the command line (`python -m central.consumer --help`).
"""
