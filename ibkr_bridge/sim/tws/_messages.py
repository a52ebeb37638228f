"""The TWS API messages the simulator sends (server → client).

Each builder produces exactly the field list ib_async 2.1.0's ``decoder.py`` reads for a
given server version; the version-dependent ones take it as their first argument.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import frozen

from ibkr_bridge.sim.portfolio import Instrument
from ibkr_bridge.sim.tws._codec import (
    V_ADVANCED_REJECT,
    V_SIZE_RULES,
    V_SUGGESTED_SIZE_INCREMENT,
    Field,
    encode,
)


def handshake_reply(version: int, connection_time: str) -> bytes:
    return encode([version, connection_time])


def error(version: int, req_id: int, code: int, message: str, advanced: str = "") -> bytes:
    fields: list[Field] = [4, 2, req_id, code, message]
    if version >= V_ADVANCED_REJECT:
        fields.append(advanced)
    return encode(fields)


def managed_accounts(accounts: Sequence[str]) -> bytes:
    return encode([15, 1, ",".join(accounts)])


def next_valid_id(order_id: int) -> bytes:
    return encode([9, 1, order_id])


def current_time(epoch_seconds: int) -> bytes:
    return encode([49, 1, epoch_seconds])


def _strike(inst: Instrument) -> float:
    return inst.strike if inst.strike is not None else 0.0


def _contract(inst: Instrument, exchange: str) -> list[Field]:
    """The 11 contract fields position and updatePortfolio messages share."""
    return [
        inst.conid,
        inst.symbol,
        inst.sec_type,
        inst.expiry or "",
        _strike(inst),
        inst.right or "",
        inst.wire_multiplier,
        exchange,
        inst.currency,
        inst.local_symbol,
        inst.trading_class,
    ]


def position(account: str, inst: Instrument, quantity: float, avg_cost: float) -> bytes:
    # Positions come with an empty exchange, as from a real Gateway.
    return encode([61, 3, account, *_contract(inst, ""), quantity, avg_cost])


def position_end() -> bytes:
    return encode([62, 1])


def account_value(key: str, value: str, currency: str, account: str) -> bytes:
    return encode([6, 2, key, value, currency, account])


def portfolio_value(
    inst: Instrument,
    quantity: float,
    market_price: float,
    market_value: float,
    avg_cost: float,
    unrealized_pnl: float,
    realized_pnl: float,
    account: str,
) -> bytes:
    money = [quantity, market_price, market_value, avg_cost, unrealized_pnl, realized_pnl]
    return encode([7, 8, *_contract(inst, inst.primary_exchange), *money, account])


def account_time(hhmm: str) -> bytes:
    return encode([8, 1, hhmm])


def account_download_end(account: str) -> bytes:
    return encode([54, 1, account])


def account_update_multi(
    req_id: int, account: str, model: str, key: str, value: str, currency: str
) -> bytes:
    return encode([73, 1, req_id, account, model, key, value, currency])


def account_update_multi_end(req_id: int) -> bytes:
    return encode([74, 1, req_id])


def account_summary(req_id: int, account: str, tag: str, value: str, currency: str) -> bytes:
    return encode([63, 1, req_id, account, tag, value, currency])


def account_summary_end(req_id: int) -> bytes:
    return encode([64, 1, req_id])


def exec_details_end(req_id: int) -> bytes:
    return encode([55, 1, req_id])


def open_order_end() -> bytes:
    return encode([53, 1])


def completed_orders_end() -> bytes:
    # No version field: ib_async reads it with skip=1.
    return encode([102])


def market_data_type(req_id: int, data_type: int) -> bytes:
    return encode([58, 1, req_id, data_type])


def tick_req_params(req_id: int, min_tick: float, bbo_exchange: str, permissions: int) -> bytes:
    return encode([81, req_id, min_tick, bbo_exchange, permissions])


def tick_price(req_id: int, tick_type: int, price: float, size: float, attr_mask: int = 0) -> bytes:
    return encode([1, 6, req_id, tick_type, price, size, attr_mask])


def tick_size(req_id: int, tick_type: int, size: float) -> bytes:
    return encode([2, 6, req_id, tick_type, size])


def tick_option_computation(
    req_id: int,
    tick_type: int,
    tick_attrib: int,
    implied_vol: Field,
    delta: Field,
    opt_price: Field,
    pv_dividend: Field,
    gamma: Field,
    vega: Field,
    theta: Field,
    und_price: Field,
) -> bytes:
    # No version field from server version 156 on.
    greeks = [implied_vol, delta, opt_price, pv_dividend, gamma, vega, theta, und_price]
    return encode([21, req_id, tick_type, tick_attrib, *greeks])


def tick_snapshot_end(req_id: int) -> bytes:
    return encode([57, 1, req_id])


@frozen(kw_only=True)
class DetailsExtra:
    """The contractDetails fields an :class:`Instrument` does not carry."""

    min_tick: float
    long_name: str
    valid_exchanges: str
    trading_hours: str
    liquid_hours: str
    order_types: str = "LMT,MKT,STP,STPLMT,TRAIL"
    time_zone: str = "US/Eastern"
    stock_type: str = ""
    under_symbol: str = ""
    under_sec_type: str = ""
    market_rule_ids: str = "26"


def contract_details(version: int, req_id: int, inst: Instrument, extra: DetailsExtra) -> bytes:
    fields: list[Field] = [10]
    if version < V_SIZE_RULES:
        fields.append(8)
    fields += [
        req_id,
        inst.symbol,
        inst.sec_type,
        inst.expiry or "",
        _strike(inst),
        inst.right or "",
        inst.exchange,
        inst.currency,
        inst.local_symbol,
        inst.trading_class,  # marketName
        inst.trading_class,
        inst.conid,
        extra.min_tick,
    ]
    if version < V_SIZE_RULES:
        fields.append(1)  # mdSizeMultiplier, obsolete
    fields += [
        inst.wire_multiplier,
        extra.order_types,
        extra.valid_exchanges,
        1,  # priceMagnifier
        inst.underlying_conid or 0,
        extra.long_name,
        inst.primary_exchange,
        (inst.expiry or "")[:6],  # contractMonth
        "",  # industry
        "",  # category
        "",  # subcategory
        extra.time_zone,
        extra.trading_hours,
        extra.liquid_hours,
        "",  # evRule
        "",  # evMultiplier
        0,  # no secIds
        1,  # aggGroup
        extra.under_symbol,
        extra.under_sec_type,
        extra.market_rule_ids,
        inst.expiry or "",  # realExpirationDate
        extra.stock_type,
    ]
    if version == V_SUGGESTED_SIZE_INCREMENT:
        fields.append(1)
    if version >= V_SIZE_RULES:
        fields += [1, 1, 1]  # minSize, sizeIncrement, suggestedSizeIncrement
    return encode(fields)


def contract_details_end(req_id: int) -> bytes:
    return encode([52, 1, req_id])
