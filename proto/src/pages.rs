//! Lists a coordinator answers in pages (groups, nodes), gathered whole:
//! by failoverctl over gRPC, and by the REST API from the same calls.

/// Every entry of a listing the coordinator answers in pages: `fetch`
/// gets the page after a token (empty: the first) and the next token
/// (empty: that was the last).
pub async fn all_pages<T, Fut>(
    mut fetch: impl FnMut(String) -> Fut,
) -> Result<Vec<T>, tonic::Status>
where
    Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token.clone()).await?;
        all.extend(page);
        // A token that does not move on would loop forever.
        if next.is_empty() || next == token {
            return Ok(all);
        }
        token = next;
    }
}
