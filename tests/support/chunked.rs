//! A strict reader of HTTP/1.1 responses for the tests that look at the wire: the head parsed
//! by `httparse`, a chunked body taken apart chunk by chunk with `httparse::parse_chunk_size`,
//! and anything that breaks RFC 9112's chunk grammar (a bad size line, data not followed by
//! CRLF, an empty chunk before the end, bytes after the last chunk) a panic that says what.

use super::WAIT;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A response head as the client saw it.
pub struct Head {
    pub status: u16,
    /// Field names lowercased, in order.
    pub fields: Vec<(String, String)>,
}

impl Head {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads a response head from `conn`; what came after it stays in `rest`.
pub async fn read_head(conn: &mut TcpStream, rest: &mut Vec<u8>) -> Head {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        match response.parse(rest).expect("a well-formed HTTP/1.1 response head") {
            httparse::Status::Complete(len) => {
                let head = Head {
                    status: response.code.unwrap(),
                    fields: response
                        .headers
                        .iter()
                        .map(|f| (f.name.to_ascii_lowercase(), String::from_utf8(f.value.to_vec()).unwrap()))
                        .collect(),
                };
                rest.drain(..len);
                return head;
            }
            httparse::Status::Partial => assert!(read_more(conn, rest).await, "the connection closed inside the head"),
        }
    }
}

/// One more read into `buf`; false when the connection closed.
async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    let n = tokio::time::timeout(WAIT, conn.read(&mut chunk)).await.expect("bytes within the wait").unwrap();
    buf.extend_from_slice(&chunk[..n]);
    n > 0
}

/// What the next read of a chunked body gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    Data(Vec<u8>),
    /// The last chunk (`0` CRLF CRLF, no trailer), and the connection closed after it.
    Last,
}

/// A chunked body read from a connection, one chunk at a time.
pub struct Chunked {
    pub buf: Vec<u8>,
}

impl Chunked {
    /// Reads the whole next chunk.
    pub async fn next(&mut self, conn: &mut TcpStream) -> Chunk {
        loop {
            match httparse::parse_chunk_size(&self.buf) {
                Ok(httparse::Status::Complete((line, 0))) => {
                    while self.buf.len() < line + 2 {
                        assert!(read_more(conn, &mut self.buf).await, "closed inside the last chunk");
                    }
                    assert_eq!(&self.buf[line..line + 2], b"\r\n", "the last chunk ends with CRLF (no trailer fields)");
                    self.buf.drain(..line + 2);
                    // Nothing after it: the server closes.
                    assert!(!read_more(conn, &mut self.buf).await && self.buf.is_empty(), "bytes after the last chunk");
                    return Chunk::Last;
                }
                Ok(httparse::Status::Complete((line, size))) => {
                    let size = usize::try_from(size).unwrap();
                    while self.buf.len() < line + size + 2 {
                        assert!(read_more(conn, &mut self.buf).await, "closed inside a chunk of {size} bytes");
                    }
                    assert_eq!(&self.buf[line + size..line + size + 2], b"\r\n", "chunk data is followed by CRLF");
                    let data = self.buf[line..line + size].to_vec();
                    self.buf.drain(..line + size + 2);
                    return Chunk::Data(data);
                }
                Ok(httparse::Status::Partial) => {
                    assert!(read_more(conn, &mut self.buf).await, "closed between chunks, without the last chunk")
                }
                Err(e) => panic!("bad chunk size line ({e:?}) in {:?}", String::from_utf8_lossy(&self.buf[..self.buf.len().min(40)])),
            }
        }
    }

    /// The next data chunk; panics at the end of the body.
    pub async fn data(&mut self, conn: &mut TcpStream) -> Vec<u8> {
        match self.next(conn).await {
            Chunk::Data(data) => data,
            Chunk::Last => panic!("the body ended"),
        }
    }
}
