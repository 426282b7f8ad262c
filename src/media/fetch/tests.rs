//! Every test sends traffic only to loopback. Refusals of other addresses are proved
//! before any connection: IP literals through [`Fetcher::check`] (the same `check_url`
//! every hop of `fetch` goes through) and names through [`GuardedResolver`] called
//! directly with a stub resolver. End to end, refusals are shown on loopback addresses
//! that are not allowed (127.0.0.2, ::1, spellings of 127.0.0.1), with listeners there
//! counting that nothing arrived.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use futures_util::StreamExt as _;
use futures_util::stream;

use super::*;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
const MAX: u64 = 100_000;

/// What the origin server saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, HeaderMap)>>>);

impl Seen {
    fn paths(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A loopback HTTP server on `ip:port` (0 = any free port) recording every request.
async fn origin_at(ip: &str, port: u16) -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let app = Router::new()
        .route("/chart.png", get(|| async { PNG }))
        .route(
            "/named",
            get(|| async {
                (
                    [(
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"report.pdf\"",
                    )],
                    "%PDF-1.7",
                )
            }),
        )
        .route("/hop/{n}", get(hop))
        .route("/slow-hop/{n}", get(slow_hop))
        .route("/to", get(to))
        .route(
            "/no-location",
            get(|| async { axum::http::StatusCode::FOUND }),
        )
        .route(
            "/missing",
            get(|| async { axum::http::StatusCode::NOT_FOUND }),
        )
        .route("/declared-big", get(declared_big))
        .route("/endless", get(endless))
        .route("/exact/{n}", get(exact))
        .route("/slow-headers", get(slow_headers))
        .route(
            "/late-redirect",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                Redirect::to("/slow-headers")
            }),
        )
        .route("/trickle", get(trickle))
        .layer(axum::middleware::from_fn_with_state(seen.clone(), record))
        .with_state(());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

async fn origin() -> (SocketAddr, Seen) {
    origin_at("127.0.0.1", 0).await
}

async fn record(
    State(seen): State<Seen>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_owned();
    seen.0
        .lock()
        .unwrap()
        .push((path, request.headers().clone()));
    next.run(request).await
}

async fn hop(Path(n): Path<u32>) -> Response {
    if n == 0 {
        return "done".into_response();
    }
    (
        [(header::SET_COOKIE, "session=from-the-origin")],
        Redirect::to(&format!("/hop/{}", n - 1)),
    )
        .into_response()
}

async fn slow_hop(Path(n): Path<u32>) -> Response {
    tokio::time::sleep(Duration::from_millis(100)).await;
    if n == 0 {
        return "done".into_response();
    }
    Redirect::to(&format!("/slow-hop/{}", n - 1)).into_response()
}

async fn to(Query(query): Query<HashMap<String, String>>) -> Response {
    Redirect::to(&query["loc"]).into_response()
}

fn chunk(len: usize) -> Result<Bytes, std::io::Error> {
    Ok(Bytes::from(vec![b'x'; len]))
}

/// Announces MAX + 1 bytes, sends one chunk, then nothing: reading it would hang.
async fn declared_big() -> Response {
    let body = stream::once(async { chunk(10) }).chain(stream::pending());
    (
        [(header::CONTENT_LENGTH, (MAX + 1).to_string())],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// Chunked, without end.
async fn endless() -> Response {
    axum::body::Body::from_stream(stream::repeat_with(|| chunk(16 * 1024))).into_response()
}

/// Chunked, exactly `n` bytes.
async fn exact(Path(n): Path<usize>) -> Response {
    let chunks = (0..n.div_ceil(1000)).map(move |i| chunk((n - i * 1000).min(1000)));
    axum::body::Body::from_stream(stream::iter(chunks)).into_response()
}

async fn slow_headers() -> &'static str {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "late"
}

async fn trickle() -> Response {
    let body = stream::once(async { chunk(10) }).chain(stream::pending());
    axum::body::Body::from_stream(body).into_response()
}

/// Names to addresses, for tests: no DNS query leaves the process.
struct Stub(HashMap<&'static str, Vec<IpAddr>>);

impl Resolve for Stub {
    fn resolve(&self, name: Name) -> Resolving {
        let found = self.0.get(name.as_str()).cloned();
        Box::pin(async move {
            let ips = found.ok_or("no such name in the stub")?;
            Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0))) as Addrs)
        })
    }
}

fn stub(entries: &[(&'static str, &[&str])]) -> Arc<Stub> {
    Arc::new(Stub(
        entries
            .iter()
            .map(|(name, ips)| (*name, ips.iter().map(|ip| ip.parse().unwrap()).collect()))
            .collect(),
    ))
}

fn limits(allow: &[&str]) -> FetchLimits {
    FetchLimits {
        max_bytes: MAX,
        timeout: Duration::from_secs(5),
        allow: allow.iter().map(|net| net.parse().unwrap()).collect(),
    }
}

/// Allows 127.0.0.1 only; names resolve through `names`.
fn fetcher_with(names: &[(&'static str, &[&str])]) -> Fetcher {
    Fetcher::with_resolver(limits(&["127.0.0.1/32"]), stub(names)).unwrap()
}

fn fetcher() -> Fetcher {
    fetcher_with(&[("img.test", &["127.0.0.1"])])
}

/// Reads the whole body: the bytes read before the first error, and that error.
async fn read(body: Body) -> (Vec<u8>, Option<FetchError>) {
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(item) = body.next().await {
        match item {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                // Without a working cap, stop here rather than fill the memory.
                assert!(bytes.len() as u64 <= 2 * MAX, "read past twice the cap");
            }
            Err(e) => {
                assert!(body.next().await.is_none(), "the body ends after its error");
                return (bytes, Some(e));
            }
        }
    }
    (bytes, None)
}

fn refused(err: &FetchError) -> (Option<IpAddr>, Reason) {
    match err {
        FetchError::Refused {
            resolved, reason, ..
        } => (*resolved, *reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn fetches_from_an_allowed_server_with_its_name_and_length() {
    let (addr, seen) = origin().await;
    let fetcher = fetcher();
    let fetched = fetcher
        .fetch(&format!("http://{addr}/chart.png"))
        .await
        .unwrap();
    assert_eq!(fetched.filename.as_deref(), Some("chart.png"));
    assert_eq!(fetched.content_length, Some(PNG.len() as u64));
    assert_eq!(read(fetched.body).await, (PNG.to_vec(), None));

    // By name, through the resolver, and a name from Content-Disposition.
    let port = addr.port();
    let fetched = fetcher
        .fetch(&format!("http://img.test:{port}/named?x=1"))
        .await
        .unwrap();
    assert_eq!(fetched.filename.as_deref(), Some("report.pdf"));
    assert_eq!(read(fetched.body).await.0, b"%PDF-1.7");
    assert_eq!(seen.paths(), ["/chart.png", "/named"]);
}

/// The spellings of loopback and other special addresses a URL can carry are refused
/// before anything connects: a listener on 127.0.0.1 sees none of them.
#[tokio::test]
async fn ip_literals_are_refused_before_connecting() {
    let (addr, seen) = origin().await;
    let port = addr.port();
    let nothing_allowed = Fetcher::with_resolver(limits(&[]), stub(&[])).unwrap();
    let loopback = [
        format!("http://127.0.0.1:{port}/chart.png"),
        format!("http://127.1:{port}/chart.png"),
        format!("http://0x7f000001:{port}/chart.png"),
        format!("http://2130706433:{port}/chart.png"),
        format!("http://0177.0.0.1:{port}/chart.png"),
        format!("http://127.0.0.1.:{port}/chart.png"),
        format!("http://[::1]:{port}/chart.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/chart.png"),
        format!("http://[::ffff:7f00:1]:{port}/chart.png"),
        format!("http://0.0.0.0:{port}/chart.png"),
        format!("https://0:{port}/chart.png"),
    ];
    for url in &loopback {
        let err = nothing_allowed.fetch(url).await.unwrap_err();
        let (resolved, reason) = refused(&err);
        assert_eq!(resolved, None, "{url}: refused as a literal, not resolved");
        assert!(
            matches!(
                reason,
                Reason::Loopback | Reason::Unspecified | Reason::ThisNetwork
            ),
            "{url}: {reason:?}"
        );
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(seen.count(), 0, "nothing reached the listener");

    // Not loopback: checked without fetching (fetch runs each hop through the same check),
    // so no packet ever goes to these networks.
    let others = [
        (
            "http://169.254.169.254/latest/meta-data/",
            Reason::LinkLocal,
        ),
        (
            "http://100.100.100.200/latest/meta-data/",
            Reason::SharedAddressSpace,
        ),
        ("http://[fd00:ec2::254]/latest/meta-data/", Reason::Private),
        ("http://[fe80::1]/", Reason::LinkLocal),
        ("http://10.0.0.1/", Reason::Private),
        ("http://10.1/", Reason::Private),
        ("http://192.168.1.1/", Reason::Private),
        ("http://0xc0a80101/", Reason::Private),
        ("http://172.16.0.1/", Reason::Private),
        ("http://[::ffff:10.0.0.1]/", Reason::Private),
        ("http://[64:ff9b::a9fe:a9fe]/", Reason::LinkLocal),
        ("http://224.0.0.1/", Reason::Multicast),
    ];
    for (url, want) in others {
        let err = nothing_allowed.check(url).unwrap_err();
        assert_eq!(refused(&err), (None, want), "{url}");
    }
    let allowed = fetcher();
    assert!(allowed.check("http://127.1/x").is_ok());
    assert!(allowed.check("http://127.0.0.2/x").is_err());
}

#[tokio::test]
async fn bad_urls() {
    let fetcher = fetcher();
    let cases = [
        (
            "not a url",
            "the URL is not valid: relative URL without a base",
        ),
        (
            "ftp://127.0.0.1/x",
            "only http and https URLs can be fetched, not ftp:",
        ),
        (
            "file:///etc/passwd",
            "only http and https URLs can be fetched, not file:",
        ),
        (
            "http://user:pass@127.0.0.1/x",
            "a URL with a user name or password is not fetched",
        ),
        (
            "http://user@127.0.0.1/x",
            "a URL with a user name or password is not fetched",
        ),
        (
            "http://:pw@127.0.0.1/x",
            "a URL with a user name or password is not fetched",
        ),
    ];
    for (url, message) in cases {
        let err = fetcher.fetch(url).await.unwrap_err();
        assert_eq!(err.to_string(), message, "{url}");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}

/// Names are checked after resolution, and refused if ANY address is refused.
#[tokio::test]
async fn the_guard_refuses_names_that_resolve_to_refused_addresses() {
    let names = stub(&[
        ("intranet.test", &["10.0.0.1"]),
        ("metadata.test", &["169.254.169.254"]),
        ("aliyun-metadata.test", &["100.100.100.200"]),
        ("ec2-v6.test", &["fd00:ec2::254"]),
        ("mapped.test", &["::ffff:192.168.1.1"]),
        ("mixed.test", &["93.184.215.14", "10.0.0.1"]),
        ("public.test", &["93.184.215.14", "2606:4700::1111"]),
        ("intranet-allowed.test", &["10.1.2.3"]),
    ]);
    let guard = GuardedResolver {
        inner: names,
        allow: Arc::new(limits(&["10.1.0.0/16"])),
    };
    let lookup = |name: &str| guard.resolve(name.parse().unwrap());
    for (name, ip, reason) in [
        ("intranet.test", "10.0.0.1", Reason::Private),
        ("metadata.test", "169.254.169.254", Reason::LinkLocal),
        (
            "aliyun-metadata.test",
            "100.100.100.200",
            Reason::SharedAddressSpace,
        ),
        ("ec2-v6.test", "fd00:ec2::254", Reason::Private),
        ("mapped.test", "::ffff:192.168.1.1", Reason::Private),
        ("mixed.test", "10.0.0.1", Reason::Private),
    ] {
        let Err(err) = lookup(name).await else {
            panic!("{name} was not refused");
        };
        let refusal = err.downcast_ref::<Refusal>().unwrap();
        assert_eq!(
            (refusal.ip, refusal.reason),
            (ip.parse().unwrap(), reason),
            "{name}"
        );
    }
    let Ok(addrs) = lookup("public.test").await else {
        panic!("public.test was refused");
    };
    assert_eq!(
        addrs.count(),
        2,
        "all checked addresses go to the connector"
    );
    assert!(lookup("intranet-allowed.test").await.is_ok());
}

/// End to end through the resolver: names resolving to loopback addresses that are not
/// allowed never connect (a listener on 127.0.0.2 counts).
#[tokio::test]
async fn names_resolving_to_refused_addresses_are_not_fetched() {
    let (addr, seen) = origin().await;
    let (other, other_seen) = origin_at("127.0.0.2", 0).await;
    let fetcher = fetcher_with(&[
        ("img.test", &["127.0.0.1"]),
        ("other.test", &["127.0.0.2"]),
        ("both.test", &["127.0.0.1", "127.0.0.2"]),
        ("localhost", &["127.0.0.1", "::1"]),
    ]);
    let cases = [
        (
            format!("http://other.test:{}/chart.png", other.port()),
            "127.0.0.2",
        ),
        (
            format!("http://both.test:{}/chart.png", addr.port()),
            "127.0.0.2",
        ),
        (format!("http://localhost:{}/chart.png", addr.port()), "::1"),
    ];
    for (url, ip) in cases {
        let err = fetcher.fetch(&url).await.unwrap_err();
        assert_eq!(
            refused(&err),
            (Some(ip.parse().unwrap()), Reason::Loopback),
            "{url}"
        );
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let host = Url::parse(&url).unwrap().host_str().unwrap().to_owned();
        assert_eq!(
            err.to_string(),
            format!(
                "refused to fetch from {host}: it resolves to {ip}, a loopback address (this machine); \
                 only public addresses are fetched unless media.fetch_allow allows the network"
            )
        );
    }
    assert_eq!((seen.count(), other_seen.count()), (0, 0));

    // A name the stub does not know: a DNS failure, said without the URL.
    let err = fetcher
        .fetch("http://nowhere.test/x?token=SECRET")
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("could not fetch from nowhere.test: "),
        "{err}"
    );
    assert!(!err.to_string().contains("SECRET"), "{err}");
}

/// Every hop of a redirect is checked like the first URL.
#[tokio::test]
async fn redirects_are_checked_at_every_hop() {
    let (addr, seen) = origin().await;
    let (other, other_seen) = origin_at("127.0.0.2", 0).await;
    let fetcher = fetcher_with(&[
        ("other.test", &["127.0.0.2"]),
        ("localhost", &["127.0.0.1", "::1"]),
    ]);
    let via = |location: String| {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("loc", &location)
            .finish();
        format!("http://{addr}/to?{query}")
    };

    // Followed, relative or absolute, to an allowed address; the name is the last hop's.
    for location in ["/chart.png".to_owned(), format!("http://{addr}/chart.png")] {
        let fetched = fetcher.fetch(&via(location)).await.unwrap();
        assert_eq!(fetched.filename.as_deref(), Some("chart.png"));
        assert_eq!(read(fetched.body).await.0, PNG);
    }

    let refusals = [
        (format!("http://127.0.0.2:{}/chart.png", other.port()), None),
        (
            format!("http://other.test:{}/chart.png", other.port()),
            Some("127.0.0.2"),
        ),
        (
            format!("http://localhost:{}/chart.png", addr.port()),
            Some("::1"),
        ),
        (format!("http://[::1]:{}/chart.png", addr.port()), None),
    ];
    for (location, resolved) in refusals {
        let err = fetcher.fetch(&via(location.clone())).await.unwrap_err();
        let (got, reason) = refused(&err);
        assert_eq!(got, resolved.map(|ip| ip.parse().unwrap()), "{location}");
        assert_eq!(reason, Reason::Loopback, "{location}");
    }
    assert_eq!(other_seen.count(), 0, "127.0.0.2 was never contacted");

    let err = fetcher
        .fetch(&via("file:///etc/passwd".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::UnsupportedScheme { .. }),
        "{err:?}"
    );
    let err = fetcher
        .fetch(&via(format!("http://u:p@{addr}/chart.png")))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Credentials);
    let err = fetcher
        .fetch(&format!("http://{addr}/no-location"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::BadRedirect { .. }), "{err:?}");
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);

    // Only the first hops' own paths reached the origin: /chart.png twice, /to each time.
    assert_eq!(
        seen.paths().iter().filter(|p| *p == "/chart.png").count(),
        2
    );
}

#[tokio::test]
async fn at_most_five_redirects_without_cookies_referer_or_other_headers() {
    let (addr, seen) = origin().await;
    let fetcher = fetcher();
    let fetched = fetcher
        .fetch(&format!("http://{addr}/hop/{MAX_REDIRECTS}"))
        .await
        .unwrap();
    assert_eq!(read(fetched.body).await.0, b"done");
    assert_eq!(seen.count(), MAX_REDIRECTS + 1);

    let err = fetcher
        .fetch(&format!("http://{addr}/hop/{}", MAX_REDIRECTS + 1))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "127.0.0.1 redirected more than 5 times");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        seen.count(),
        2 * (MAX_REDIRECTS + 1),
        "the 7th URL is not requested"
    );

    // Every hop set a cookie; none came back. Only our own headers are sent.
    for (path, headers) in seen.0.lock().unwrap().iter() {
        let names: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
        for name in &names {
            assert!(
                matches!(*name, "host" | "user-agent" | "accept"),
                "{path}: unexpected header {name} in {names:?}"
            );
        }
        let agent = headers[header::USER_AGENT].to_str().unwrap();
        assert!(agent.starts_with("pushbot/"), "{agent}");
    }
}

#[tokio::test]
async fn the_body_is_capped_while_it_streams() {
    let (addr, _) = origin().await;
    let fetcher = fetcher();

    // Announced too large: refused at the headers, the (hanging) body never read.
    let started = Instant::now();
    let err = fetcher
        .fetch(&format!("http://{addr}/declared-big"))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::TooLarge { limit: MAX });
    assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        err.to_string(),
        "the file is larger than the limit of 100000 bytes"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // Not announced, without end: an error as soon as the cap is passed.
    let fetched = fetcher
        .fetch(&format!("http://{addr}/endless"))
        .await
        .unwrap();
    assert_eq!(fetched.content_length, None);
    let (bytes, err) = read(fetched.body).await;
    assert_eq!(err, Some(FetchError::TooLarge { limit: MAX }));
    assert!(bytes.len() as u64 <= MAX, "{}", bytes.len());

    // Exactly the cap is fine; one byte more is not.
    let fetched = fetcher
        .fetch(&format!("http://{addr}/exact/{MAX}"))
        .await
        .unwrap();
    let (bytes, err) = read(fetched.body).await;
    assert_eq!((bytes.len() as u64, err), (MAX, None));
    let fetched = fetcher
        .fetch(&format!("http://{addr}/exact/{}", MAX + 1))
        .await
        .unwrap();
    assert_eq!(
        read(fetched.body).await.1,
        Some(FetchError::TooLarge { limit: MAX })
    );
}

#[tokio::test]
async fn one_deadline_for_the_whole_fetch() {
    let (addr, _) = origin().await;
    let mut short = limits(&["127.0.0.1/32"]);
    short.timeout = Duration::from_millis(350);
    let fetcher = Fetcher::with_resolver(short, stub(&[])).unwrap();
    let timed_out = FetchError::Timeout {
        after: Duration::from_millis(350),
    };

    let started = Instant::now();
    let err = fetcher
        .fetch(&format!("http://{addr}/slow-headers"))
        .await
        .unwrap_err();
    assert_eq!(err, timed_out);
    assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(err.to_string(), "fetching the file took longer than 350ms");
    assert!(started.elapsed() < Duration::from_secs(3));

    // The body counts: headers at once, then a trickle that stops.
    let fetched = fetcher
        .fetch(&format!("http://{addr}/trickle"))
        .await
        .unwrap();
    let (bytes, err) = read(fetched.body).await;
    assert_eq!((bytes.len(), err), (10, Some(timed_out.clone())));

    // Redirects count: five hops of 100 ms each pass no per-hop limit but the whole one.
    let err = fetcher
        .fetch(&format!("http://{addr}/slow-hop/4"))
        .await
        .unwrap_err();
    assert_eq!(err, timed_out);
    let fetched = fetcher
        .fetch(&format!("http://{addr}/slow-hop/1"))
        .await
        .unwrap();
    assert_eq!(read(fetched.body).await.0, b"done");

    // The last request gets what is left, not a whole timeout of its own: 0.8 s for the
    // redirect, then headers that never come, and the fetch ends at 1 s, not at 1.8 s.
    let mut one_second = limits(&["127.0.0.1/32"]);
    one_second.timeout = Duration::from_secs(1);
    let fetcher = Fetcher::with_resolver(one_second, stub(&[])).unwrap();
    let started = Instant::now();
    let err = fetcher
        .fetch(&format!("http://{addr}/late-redirect"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
}

/// Errors name the host, never the URL's query, which may carry a token.
#[tokio::test]
async fn errors_never_echo_the_query() {
    let (addr, _) = origin().await;
    let fetcher = fetcher();
    let err = fetcher
        .fetch(&format!("http://{addr}/missing?token=SECRET"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        FetchError::Status {
            host: "127.0.0.1".into(),
            status: 404
        }
    );
    assert_eq!(err.to_string(), "127.0.0.1 answered HTTP 404");
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);

    // Nothing listens on a port just freed.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = fetcher
        .fetch(&format!("http://127.0.0.1:{closed}/x.png?token=SECRET"))
        .await
        .unwrap_err();
    let FetchError::Unreachable { host, detail } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(host, "127.0.0.1");
    assert!(
        !detail.contains("SECRET") && !detail.contains("x.png"),
        "{detail}"
    );
    assert!(!detail.contains(&closed.to_string()), "{detail}");

    let nothing_allowed = Fetcher::with_resolver(limits(&[]), stub(&[])).unwrap();
    let err = nothing_allowed
        .check("http://10.0.0.1/x?token=SECRET")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused to fetch from 10.0.0.1: it is a private network address; \
         only public addresses are fetched unless media.fetch_allow allows the network"
    );
}

/// Proxy variables in the environment are ignored: a proxy would resolve and connect to
/// addresses no one checked. The child test below runs in a process with HTTP_PROXY
/// pointing at a listener that must see nothing.
#[test]
fn proxy_environment_is_ignored() {
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    proxy.set_nonblocking(true).unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "media::fetch::tests::proxy_environment_child",
            "--ignored",
            "--test-threads=1",
        ])
        .env("PUSHBOT_FETCH_PROXY_CHILD", "1")
        .env("HTTP_PROXY", format!("http://{proxy_addr}"))
        .env("http_proxy", format!("http://{proxy_addr}"))
        .env("ALL_PROXY", format!("http://{proxy_addr}"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("1 passed"), "the child ran: {stdout}");
    assert!(
        proxy.accept().is_err(),
        "nothing connected to the proxy from the environment"
    );
}

#[tokio::test]
#[ignore = "run by proxy_environment_is_ignored with HTTP_PROXY set"]
async fn proxy_environment_child() {
    let (addr, seen) = origin().await;
    if std::env::var_os("PUSHBOT_FETCH_PROXY_CHILD").is_some() {
        assert!(std::env::var_os("HTTP_PROXY").is_some());
    }
    let fetched = fetcher()
        .fetch(&format!("http://{addr}/chart.png"))
        .await
        .unwrap();
    assert_eq!(read(fetched.body).await.0, PNG);
    assert_eq!(seen.count(), 1);
}
