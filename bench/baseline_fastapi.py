"""The hand-written alternative to Tally's REST GetAccount, as a team would write it from the seeds.

FastAPI on uvicorn, PyJWT for the bearer token, a Redis rate limiter (a fixed one-second window per
subject: INCR and EXPIRE in one pipelined round trip per request), SQLAlchemy's async ORM reading
the account row from the same `accounts` table of the same PostgreSQL database, a Pydantic
response model, and one JSON access-log line per request. No scopes, sessions, spans, deadlines,
request ids or structured errors: that is the point of the comparison (bench/README.md).

Run by the bench (bench/cores.py) as
`python -m uvicorn baseline_fastapi:app --app-dir bench --host 127.0.0.1 --port P [--workers N]
--no-access-log`, configured from the environment:

  BASELINE_DATABASE_URL   postgresql+asyncpg://... (the bench database)
  BASELINE_REDIS_URL      redis://127.0.0.1:6379/14
  BASELINE_JWT_SECRET     the HS256 secret Tally's tokens are signed with (iss and aud "tally")
  BASELINE_RATE_LIMIT     requests per second per subject (the bench sets it far above the load)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import jwt
import redis.asyncio as redis
from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from pydantic import BaseModel
from sqlalchemy import JSON, DateTime, Integer, String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DATABASE_URL = os.environ.get(
    "BASELINE_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:6379/14")
JWT_SECRET = os.environ.get("BASELINE_JWT_SECRET", "")
RATE_LIMIT = int(os.environ.get("BASELINE_RATE_LIMIT", "100"))
RATE_KEY_PREFIX = "baseline:rl"

access = logging.getLogger("baseline.access")
access.setLevel(logging.INFO)
access.addHandler(logging.StreamHandler(sys.stderr))
access.propagate = False


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    display_name: Mapped[str] = mapped_column(String)
    email: Mapped[str] = mapped_column(String)
    phone: Mapped[str] = mapped_column(String)
    currency_code: Mapped[str] = mapped_column(String)
    billing_time_zone: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delete_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revision: Mapped[int] = mapped_column(Integer)


class AccountOut(BaseModel):
    id: str
    display_name: str
    email: str
    phone: str
    currency_code: str
    billing_time_zone: str
    status: str
    metadata: dict[str, str]
    create_time: datetime
    update_time: datetime
    revision: int


engine = create_async_engine(DATABASE_URL, pool_size=10, max_overflow=10)
sessions = async_sessionmaker(engine, expire_on_commit=False)
limiter = redis.Redis.from_url(REDIS_URL)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield
    await limiter.aclose()
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.middleware("http")
async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    started = time.perf_counter()
    response = await call_next(request)
    access.info(
        json.dumps(
            {
                "time": time.time(),
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "client": request.client.host if request.client else None,
            }
        )
    )
    return response


async def session() -> AsyncIterator[AsyncSession]:
    async with sessions() as db:
        yield db


def subject(authorization: Annotated[str | None, Header()] = None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(status_code=401, detail="missing bearer token")
    try:
        claims: dict[str, Any] = jwt.decode(
            authorization[7:], JWT_SECRET, algorithms=["HS256"], audience="tally", issuer="tally"
        )
    except jwt.InvalidTokenError as exc:
        raise HTTPException(status_code=401, detail=f"invalid token: {exc}") from None
    return str(claims["sub"])


async def rate_limited(who: Annotated[str, Depends(subject)]) -> str:
    key = f"{RATE_KEY_PREFIX}:{who}:{int(time.time())}"
    async with limiter.pipeline(transaction=False) as pipe:
        count, _ = await pipe.incr(key).expire(key, 2, nx=True).execute()
    if count > RATE_LIMIT:
        raise HTTPException(status_code=429, detail="rate limit exceeded")
    return who


@app.get("/v1/accounts/{account_id}", response_model=AccountOut)
async def get_account(
    account_id: str,
    _who: Annotated[str, Depends(rate_limited)],
    db: Annotated[AsyncSession, Depends(session)],
) -> AccountOut:
    account = await db.get(Account, account_id)
    if account is None or account.delete_time is not None:
        raise HTTPException(status_code=404, detail="account not found")
    return AccountOut(
        id=account.id,
        display_name=account.display_name,
        email=account.email,
        phone=account.phone,
        currency_code=account.currency_code,
        billing_time_zone=account.billing_time_zone,
        status=account.status,
        metadata=account.metadata_,
        create_time=account.create_time,
        update_time=account.update_time,
        revision=account.revision,
    )


@app.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "SERVING", "pid": str(os.getpid())}
