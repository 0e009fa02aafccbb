// The client's own runtime, appended by oneprotect-codegen after the
// progenitor client: every response body the client reads is bounded.

/// How a [`Client`] reads answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// The largest response body read, in bytes. A longer body (announced
    /// by `Content-Length` or found while streaming) fails the call with
    /// [`ResponseTooLarge`] before more than this is held in memory.
    pub max_response_bytes: usize,
}

impl Default for ClientOptions {
    /// 1 MiB: far above any answer of the contract, far below what would
    /// hurt a small host.
    fn default() -> Self {
        Self { max_response_bytes: 1024 * 1024 }
    }
}

/// A response body longer than [`ClientOptions::max_response_bytes`]; it is
/// the source of the call's `Error::ResponseBodyError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseTooLarge {
    pub limit: usize,
}

impl std::fmt::Display for ResponseTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the response body is larger than the {} bytes this client reads", self.limit)
    }
}

impl std::error::Error for ResponseTooLarge {}

impl progenitor_client::ClientHooks<ClientOptions> for Client {
    async fn exec(&self, request: reqwest::Request, _info: &OperationInfo) -> reqwest::Result<reqwest::Response> {
        let response = progenitor_client::ClientInfo::client(self).execute(request).await?;
        Ok(bounded_response(response, progenitor_client::ClientInfo::inner(self).max_response_bytes))
    }
}

/// The same response whose body fails once more than `limit` bytes arrive
/// (at once when `Content-Length` already says so).
fn bounded_response(response: reqwest::Response, limit: usize) -> reqwest::Response {
    let announced = response.content_length().map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
    let remaining = if announced.is_some_and(|n| n > limit) { None } else { Some(limit) };
    let bounded = BoundedBody { inner: body, remaining, limit };
    reqwest::Response::from(http::Response::from_parts(parts, reqwest::Body::wrap(bounded)))
}

/// A body that yields at most `limit` bytes; `remaining` is `None` once the
/// limit is known to be exceeded.
struct BoundedBody {
    inner: reqwest::Body,
    remaining: Option<usize>,
    limit: usize,
}

impl http_body::Body for BoundedBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        let Some(remaining) = this.remaining else {
            return Poll::Ready(Some(Err(Box::new(ResponseTooLarge { limit: this.limit }))));
        };
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, bytes::Bytes::len);
                if len > remaining {
                    this.remaining = None;
                    return Poll::Ready(Some(Err(Box::new(ResponseTooLarge { limit: this.limit }))));
                }
                this.remaining = Some(remaining - len);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining.is_some() && self.inner.is_end_stream()
    }
}
