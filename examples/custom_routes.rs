//! Example: an application that serves its own HTTP routes next to wshub's
//! on one port (integrated mode), through the `on_request` hook, and pushes
//! to users from a route — the seed guide's payment callback
//! (`OrderController.PayCallback` → `SendToUser(order.UserID, "order_paid")`).
//!
//! ```text
//! cargo run --example custom_routes           # port from ./config.yaml (default 8889)
//! curl localhost:8889/api/orders              # {"orders": [...]}
//! curl localhost:8889/api/orders/1001         # one order
//! curl -X POST localhost:8889/api/orders/1001/pay
//!     # user123's sessions receive {"type":"order_paid","content":{"order_id":"1001","amount":99.5}}
//! ```
//!
//! Everything else (`/api/ws/*`, `/health`, `/metrics`, the demo page) is
//! wshub's. The port comes from `WSHUB_PORT` or the first argument, the rest
//! from `./config.yaml` when present. Ctrl-C stops it.
//!
//! The hook runs on the event-loop thread and owns the orders, so it needs
//! no lock; it must not block (no database calls here: hand slow work to
//! another thread, which pushes back through a `Handle`).
//!
//! Uses only wshub's public API; logs to stderr.

use std::collections::BTreeMap;
use std::error::Error;
use std::process::ExitCode;

use serde::Serialize;
use serde_json::json;
use wshub::{Actions, Config, Hooks, Message, Mode, Server};
use wshub::{Method, Request, Response};

/// One order of the toy shop.
#[derive(Debug, Clone, Serialize)]
struct Order {
    order_id: String,
    user_id: String,
    amount: f64,
    status: &'static str,
}

/// The application's state and routes, installed as wshub hooks.
#[derive(Debug)]
struct Shop {
    orders: BTreeMap<String, Order>,
}

impl Shop {
    fn with_sample_orders() -> Shop {
        let orders = [("1001", "user123", 99.5), ("1002", "user456", 15.0)]
            .into_iter()
            .map(|(id, user, amount)| {
                let order = Order {
                    order_id: id.to_owned(),
                    user_id: user.to_owned(),
                    amount,
                    status: "pending",
                };
                (id.to_owned(), order)
            })
            .collect();
        Shop { orders }
    }

    fn respond(&mut self, route: Route<'_>, method: &Method, actions: &mut Actions) -> Response {
        match (route, method) {
            (Route::List, Method::Get) => self.list(),
            (Route::Order(id), Method::Get) => self.show(id),
            (Route::Pay(id), Method::Post) => self.pay(id, actions),
            (Route::Pay(_), _) => wrong_method("POST"),
            (Route::List | Route::Order(_), _) => wrong_method("GET"),
            (Route::Unknown, _) => Response::error(404, "not found"),
        }
    }

    fn list(&self) -> Response {
        let orders: Vec<&Order> = self.orders.values().collect();
        Response::json(200, &json!({ "orders": orders }))
    }

    fn show(&self, id: &str) -> Response {
        match self.orders.get(id) {
            Some(order) => Response::json(200, &json!(order)),
            None => Response::error(404, "no such order"),
        }
    }

    /// The payment callback: mark paid, then tell the order's user.
    fn pay(&mut self, id: &str, actions: &mut Actions) -> Response {
        let Some(order) = self.orders.get_mut(id) else {
            return Response::error(404, "no such order");
        };
        if order.status == "paid" {
            return Response::error(409, "order already paid");
        }
        order.status = "paid";
        let paid = Message::new(
            "order_paid",
            json!({ "order_id": order.order_id, "amount": order.amount }),
        );
        // Applied by the loop right after this request: every session of the
        // user receives it; an offline user simply misses it.
        if !actions.send_to_user(&order.user_id, &paid) {
            log::warn!("order {id}: paid, but the notification was refused");
        }
        log::info!("order {id} paid; notified {}", order.user_id);
        Response::json(200, &json!(order))
    }
}

impl Hooks for Shop {
    fn on_request(
        &mut self,
        request: &Request,
        _body: &[u8],
        actions: &mut Actions,
    ) -> Option<Response> {
        // `None` hands the request to wshub's own routes.
        let route = Route::parse(&request.path)?;
        Some(self.respond(route, &request.method, actions))
    }
}

/// The shop's paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    /// `/api/orders`
    List,
    /// `/api/orders/{id}`
    Order(&'a str),
    /// `/api/orders/{id}/pay`
    Pay(&'a str),
    /// Anything else under `/api/orders/`.
    Unknown,
}

impl Route<'_> {
    /// `None` for paths that are not the shop's.
    fn parse(path: &str) -> Option<Route<'_>> {
        let rest = path.strip_prefix("/api/orders")?;
        if rest.is_empty() {
            return Some(Route::List);
        }
        let rest = rest.strip_prefix('/')?;
        Some(match rest.split_once('/') {
            None if !rest.is_empty() => Route::Order(rest),
            Some((id, "pay")) if !id.is_empty() => Route::Pay(id),
            _ => Route::Unknown,
        })
    }
}

fn wrong_method(allowed: &str) -> Response {
    Response::error(405, "method not allowed").with_header("Allow", allowed.to_owned())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("custom_routes: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let (mut config, _) = Config::load(None)?;
    if let Some(port) = port_override(std::env::args().nth(1))? {
        config.app.port = port;
    }
    let level = config.effective_log_level(std::env::var("RUST_LOG").ok().as_deref());
    simple_logger::SimpleLogger::new()
        .with_level(level)
        .init()?;
    let server = Server::bind(config, Mode::Integrated)?
        .with_hooks(Shop::with_sample_orders())
        .shutdown_on_signals()?;
    log::info!(
        "shop routes on http://{}/api/orders next to wshub's",
        server.local_addr()
    );
    server.run()?;
    Ok(())
}

/// The port from the first argument, else `WSHUB_PORT`, else none.
fn port_override(arg: Option<String>) -> Result<Option<u16>, String> {
    let (name, text) = match (arg, std::env::var("WSHUB_PORT").ok()) {
        (Some(arg), _) => ("the first argument", arg),
        (None, Some(env)) => ("WSHUB_PORT", env),
        (None, None) => return Ok(None),
    };
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| format!("{name}: {text:?} is not a port number"))
}
