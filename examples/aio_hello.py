"""
Start four Python children on this machine from an asyncio program, run a
function in each at the same time, and print each answer as it arrives.

    .venv/bin/python examples/aio_hello.py
"""
import asyncio
import os
import time

import mitogen.aio


def slow_pid(delay):
    """Runs in a child: wait `delay` seconds, then say which process this is."""
    time.sleep(delay)
    return os.getpid()


async def main() -> None:
    async with mitogen.aio.Router() as router:
        children = await asyncio.gather(*[router.local() for _ in range(4)])

        # One call, awaited like any coroutine.
        print('first child is', children[0].name,
              'pid', await children[0].call(os.getpid))

        # Many calls at once: results in the order they arrive.
        receivers = [child.call_async(slow_pid, 0.1 * (4 - i))
                     for i, child in enumerate(children)]
        async for msg in mitogen.aio.Select(receivers):
            print('answer:', msg.unpickle())

        # A call that takes too long is cancelled; the child stays usable.
        try:
            await asyncio.wait_for(children[1].call(time.sleep, 10), 0.5)
        except asyncio.TimeoutError:
            print('gave up waiting for the sleeping child')
        pids = await asyncio.gather(*[c.call(os.getpid) for c in children[2:]])
        print('%d other children still answer' % (len(pids),))


if __name__ == '__main__':
    asyncio.run(main())
