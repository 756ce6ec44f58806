//! The client HTTP API's series: requests by route template, method and status, and their
//! latency.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::{latency_buckets, register, Metrics};

pub(super) struct HttpSeries {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpSeries {
    pub(super) fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        Ok(HttpSeries {
            requests: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "raftkv_http_requests_total",
                        "HTTP requests by route template, method and status code.",
                    ),
                    &["route", "method", "code"],
                )?,
            )?,
            duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "raftkv_http_request_duration_seconds",
                        "HTTP request latency by route and method.",
                    )
                    .buckets(latency_buckets()),
                    &["route", "method"],
                )?,
            )?,
        })
    }
}

impl Metrics {
    /// Records one HTTP request.
    pub(crate) fn http_request(&self, route: &str, method: &str, status: axum::http::StatusCode, elapsed: Duration) {
        self.http
            .duration
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
        self.http
            .requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
    }
}
