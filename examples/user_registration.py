"""The seed's UserRegistrationSaga: register, mail a secret, wait days for the user to
click the verification link, then activate — or clean up when the time is up.

The wait is a durable signal wait with a timeout: the web request behind the link only
needs the store and the broker to deliver it::

    durable.signal(workflow_id, "verify", code)       # or handle.signal("verify", code)

A wrong code is ignored (the workflow waits on for the rest of the three days); a signal
sent before the workflow reaches its wait is kept, not lost.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from celery_durable import SignalTimeout, WorkflowContext, current_step
from examples import mailbox, users
from examples.app import durable

VERIFICATION_WINDOW = timedelta(days=3)


@durable.step(name="RegisterUser")
def register_user(email: str, name: str) -> str:
    """Create the (inactive) user; the step's idempotency key is the user id."""
    step = current_step()
    user_id = f"user-{step.idempotency_key if step else email}"
    users.register(user_id, email, name)
    print(f"    step RegisterUser({email}) -> {user_id}", flush=True)
    return user_id


@durable.step(name="SendVerificationEmail", autoretry_for=(ConnectionError,), max_retries=5)
def send_verification_email(email: str, code: str) -> None:
    """Mail the verification link (here: the code, in the example's mailbox)."""
    mailbox.send(email, f"verify:{code}")
    print(f"    step SendVerificationEmail({email})", flush=True)


@durable.step(name="ActivateUser")
def activate_user(user_id: str) -> None:
    """The user clicked the link."""
    users.activate(user_id)
    print(f"    step ActivateUser({user_id})", flush=True)


@durable.step(name="DeleteUser")
def delete_user(user_id: str) -> None:
    """The link was never clicked: clean up."""
    users.delete(user_id)
    print(f"    step DeleteUser({user_id})", flush=True)


@durable.workflow
async def user_registration(ctx: WorkflowContext, email: str, name: str) -> str:
    """Register ``email``; activate on verification within three days, else delete."""
    user_id = await ctx.step(register_user, email, name)
    code = await ctx.run(secrets.token_urlsafe, 16)  # journaled: the same on every replay
    await ctx.step(send_verification_email, email, code)
    deadline = ctx.now() + VERIFICATION_WINDOW
    ctx.set_status({"user_id": user_id, "waiting_until": deadline.isoformat()})
    while True:
        remaining = deadline - ctx.now()
        try:
            if remaining <= timedelta(0):
                raise SignalTimeout(f"no verification for {email} within {VERIFICATION_WINDOW}")
            answer = await ctx.wait_signal("verify", timeout=remaining)
        except SignalTimeout:
            await ctx.step(delete_user, user_id)
            ctx.set_status({"user_id": user_id, "verified": False})
            return "expired"
        if answer == code:
            break
        ctx.logger.info("wrong verification code for %s; still waiting", email)
    await ctx.step(activate_user, user_id)
    ctx.set_status({"user_id": user_id, "verified": True})
    return "activated"
